//! Outgoing message queues: one pool of queued messages shared by every connection.
//!
//! Each connection holds only a [`Queue`] (head, tail, length: 12 bytes) that threads a list
//! through the pool. The pool's memory follows the number of messages in flight bus-wide, not
//! the number of connections: a per-connection ring buffer would keep its capacity (four
//! queued-message slots, about 800 bytes) on every connection that ever received a message.
//! Freed slots are reused most-recently-freed first, so a busy bus keeps touching the same few
//! cache lines and never allocates per message once the pool has grown to its working size.
//!
//! The slots live in fixed-size chunks that never move: growing the pool adds a chunk. A pool
//! in one vector that doubles would copy every queued message when it grows, and with a
//! million signals queued for a slow reader that is over 100 MB copied within one turn of the
//! event loop, tens of milliseconds in which no other connection is served.
//!
//! For the same reason a pool that goes idle after a burst does not free its chunks at once:
//! they are set aside ([`OutPool::shrink_if_idle`]) and freed a bounded number at a time
//! ([`OutPool::release_retired`]), so that the turns that give a flood's memory back each
//! stay short.

use super::connection::Outgoing;

/// Marks "no slot" in a list link.
const NIL: u32 = u32::MAX;

/// Slots per chunk (a power of two): 2048 slots of about 128 bytes, 256 KiB. Chunks much
/// smaller than the queued messages' copies they are allocated among would cut the heap a
/// drained flood frees into many pieces, each a separate `madvise` for every trim of the
/// heap while the pool waits to shrink (issue 11); the one chunk an idle pool keeps costs
/// only the pages its busiest moment touched.
const CHUNK_SHIFT: u32 = 11;
const CHUNK: usize = 1 << CHUNK_SHIFT;
const CHUNK_MASK: u32 = (CHUNK as u32) - 1;

/// One connection's queue: a list of pool slots, oldest first.
#[derive(Debug)]
pub struct Queue {
    head: u32,
    tail: u32,
    len: u32,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl Queue {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.len as usize
    }
}

/// Bytes one queued message's slot takes in the pool: the node, plus the slot's tag (an
/// upper bound: the tag may fit a niche). Charged per message by `delivery::cost`; the
/// pool's spare capacity after a burst is given back by [`OutPool::shrink_if_idle`].
pub const SLOT_BYTES: usize = std::mem::size_of::<Node>() + std::mem::size_of::<usize>();

#[derive(Debug)]
struct Node {
    msg: Outgoing,
    next: u32,
}

/// A pool slot: a queued message, or a link in the list of free slots.
#[derive(Debug)]
enum Slot {
    Full(Node),
    Free(u32),
}

/// A message to queue, built by [`OutPool::insert_with`] in its slot. A trait rather than
/// a closure so that the build can be inlined there (an attribute on a closure is not
/// stable): a relay built by a call returns it on the stack, to be copied again.
pub trait Build {
    /// The message.
    fn build(self) -> Outgoing;
}

impl Build for Outgoing {
    #[inline(always)]
    fn build(self) -> Outgoing {
        self
    }
}

/// The slots of every queued message.
#[derive(Debug)]
pub struct OutPool {
    /// Each has capacity [`CHUNK`] and never grows past it, so slots never move.
    chunks: Vec<Vec<Slot>>,
    /// The most recently freed slot, [`NIL`] if none.
    free: u32,
    /// Slots in use.
    len: usize,
    /// Chunks an idle pool no longer indexes, not freed yet ([`OutPool::release_retired`]).
    retired: Vec<Vec<Slot>>,
}

impl Default for OutPool {
    fn default() -> Self {
        OutPool {
            chunks: Vec::new(),
            free: NIL,
            len: 0,
            retired: Vec::new(),
        }
    }
}

impl OutPool {
    fn slot(&self, key: u32) -> Option<&Slot> {
        self.chunks
            .get((key >> CHUNK_SHIFT) as usize)?
            .get((key & CHUNK_MASK) as usize)
    }

    fn slot_mut(&mut self, key: u32) -> Option<&mut Slot> {
        self.chunks
            .get_mut((key >> CHUNK_SHIFT) as usize)?
            .get_mut((key & CHUNK_MASK) as usize)
    }

    fn node_mut(&mut self, key: u32) -> Option<&mut Node> {
        match self.slot_mut(key)? {
            Slot::Full(n) => Some(n),
            Slot::Free(_) => None,
        }
    }

    /// Store the message `make` builds in a free slot (the most recently freed, else the
    /// next unused one, else a new chunk), in no queue yet: [`OutPool::link_back`] appends
    /// it to one, [`OutPool::discard`] drops it. Built where it is stored, so the message
    /// (about 120 bytes) is not built on the stack and then copied into its slot. None
    /// (`make` not called) if the pool cannot index another slot (more than four billion
    /// queued messages: memory runs out long before).
    #[inline(always)]
    pub fn insert_with(&mut self, make: impl Build) -> Option<(u32, &mut Outgoing)> {
        if self.free != NIL {
            let key = self.free;
            let slot = self
                .chunks
                .get_mut((key >> CHUNK_SHIFT) as usize)?
                .get_mut((key & CHUNK_MASK) as usize)?;
            let Slot::Free(next) = *slot else {
                return None;
            };
            // The old value is a free link with nothing to drop: forgetting it spares the
            // drop call an assignment makes (the compiler does not see the slot is free).
            std::mem::forget(std::mem::replace(
                slot,
                Slot::Full(Node {
                    msg: make.build(),
                    next: NIL,
                }),
            ));
            self.free = next;
            self.len += 1;
            return match slot {
                Slot::Full(node) => Some((key, &mut node.msg)),
                Slot::Free(_) => None,
            };
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            let key = u32::try_from(self.chunks.len() << CHUNK_SHIFT).ok()?;
            if key == NIL || key.checked_add(CHUNK_MASK).is_none() {
                return None;
            }
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let n = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut()?;
        let key = ((n << CHUNK_SHIFT) | chunk.len()) as u32;
        chunk.push(Slot::Full(Node {
            msg: make.build(),
            next: NIL,
        }));
        self.len += 1;
        match chunk.last_mut() {
            Some(Slot::Full(node)) => Some((key, &mut node.msg)),
            _ => None,
        }
    }

    /// Append the message in slot `key` ([`OutPool::insert_with`]) to `q`.
    #[inline(always)]
    pub fn link_back(&mut self, q: &mut Queue, key: u32) {
        match self.node_mut(q.tail) {
            Some(last) if q.tail != NIL => last.next = key,
            _ => q.head = key,
        }
        q.tail = key;
        q.len += 1;
    }

    /// Drop the message in slot `key` ([`OutPool::insert_with`], in no queue), freeing it.
    #[cold]
    pub fn discard(&mut self, key: u32) {
        self.remove(key);
    }

    /// Take the node out of `key`, freeing the slot.
    fn remove(&mut self, key: u32) -> Option<Node> {
        let free = self.free;
        let slot = self.slot_mut(key)?;
        if matches!(slot, Slot::Free(_)) {
            return None;
        }
        let Slot::Full(node) = std::mem::replace(slot, Slot::Free(free)) else {
            return None;
        };
        self.free = key;
        self.len -= 1;
        Some(node)
    }

    /// Append `msg` to `q`. Returns false, dropping the message, if the pool cannot index
    /// another slot.
    #[inline(always)]
    pub fn push_back(&mut self, q: &mut Queue, msg: Outgoing) -> bool {
        let Some((key, _)) = self.insert_with(msg) else {
            return false;
        };
        self.link_back(q, key);
        true
    }

    /// The oldest message of `q`.
    pub fn front_mut(&mut self, q: &Queue) -> Option<&mut Outgoing> {
        if q.head == NIL {
            return None;
        }
        self.node_mut(q.head).map(|n| &mut n.msg)
    }

    /// Remove and return the oldest message of `q`.
    pub fn pop_front(&mut self, q: &mut Queue) -> Option<Outgoing> {
        if q.head == NIL {
            return None;
        }
        let node = self.remove(q.head)?;
        q.head = node.next;
        if q.head == NIL {
            q.tail = NIL;
        }
        q.len = q.len.saturating_sub(1);
        Some(node.msg)
    }

    /// The messages of `q`, oldest first.
    pub fn iter<'a>(&'a self, q: &Queue) -> Iter<'a> {
        Iter {
            pool: self,
            next: q.head,
        }
    }

    /// Drop every message of `q` (closing their fds once no other delivery holds them).
    pub fn clear(&mut self, q: &mut Queue) {
        while self.pop_front(q).is_some() {}
        *q = Queue::default();
    }

    /// Messages queued on all connections.
    pub fn total(&self) -> usize {
        self.len
    }

    /// Called when the bus has gone quiet: if nothing is queued anywhere, stop using the
    /// chunks a burst left behind, keeping one (emptied) for the next messages. They are
    /// freed by [`OutPool::release_retired`], a few per call: freeing all of a 2M-message
    /// flood's chunks at once (and so having the allocator merge and return them) made one
    /// turn of tens of milliseconds.
    pub fn shrink_if_idle(&mut self) {
        if self.len == 0 && self.chunks.len() > 1 {
            self.retired.extend(self.chunks.drain(1..));
            self.chunks.shrink_to_fit();
        }
        if self.len == 0 {
            if let Some(c) = self.chunks.first_mut() {
                c.clear();
            }
            self.free = NIL;
        }
    }

    /// Free at most `max` of the chunks [`OutPool::shrink_if_idle`] set aside. Returns the
    /// bytes freed and whether any are left.
    pub fn release_retired(&mut self, max: usize) -> (usize, bool) {
        let keep = self.retired.len().saturating_sub(max);
        let freed = (self.retired.len() - keep) * CHUNK * std::mem::size_of::<Slot>();
        self.retired.truncate(keep);
        if keep == 0 {
            self.retired = Vec::new();
        }
        (freed, keep > 0)
    }

    /// Slots allocated, set-aside chunks included (for tests and statistics).
    pub fn capacity(&self) -> usize {
        (self.chunks.len() + self.retired.len()) * CHUNK
    }
}

/// Iterator over one queue, oldest message first.
pub struct Iter<'a> {
    pool: &'a OutPool,
    next: u32,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Outgoing;

    fn next(&mut self) -> Option<&'a Outgoing> {
        if self.next == NIL {
            return None;
        }
        let Slot::Full(node) = self.pool.slot(self.next)? else {
            return None;
        };
        self.next = node.next;
        Some(&node.msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8) -> Outgoing {
        Outgoing::owned(vec![tag; 4])
    }

    fn tags(pool: &OutPool, q: &Queue) -> Vec<u8> {
        pool.iter(q).map(|m| m.data[0]).collect()
    }

    #[test]
    fn fifo_per_queue_with_interleaved_queues() {
        let mut pool = OutPool::default();
        let (mut a, mut b) = (Queue::default(), Queue::default());
        assert!(a.is_empty() && pool.front_mut(&a).is_none());
        for i in 0..5u8 {
            assert!(pool.push_back(&mut a, msg(i)));
            assert!(pool.push_back(&mut b, msg(100 + i)));
        }
        assert_eq!((a.len(), b.len(), pool.total()), (5, 5, 10));
        assert_eq!(tags(&pool, &a), [0, 1, 2, 3, 4]);
        assert_eq!(pool.pop_front(&mut a).unwrap().data[0], 0);
        assert_eq!(pool.pop_front(&mut b).unwrap().data[0], 100);
        // Freed slots get reused without disturbing either list.
        assert!(pool.push_back(&mut b, msg(105)));
        assert!(pool.push_back(&mut a, msg(5)));
        assert_eq!(tags(&pool, &a), [1, 2, 3, 4, 5]);
        assert_eq!(tags(&pool, &b), [101, 102, 103, 104, 105]);
        pool.front_mut(&a).unwrap().written = 3;
        assert_eq!(pool.iter(&a).next().unwrap().written, 3);
        pool.clear(&mut a);
        assert!(a.is_empty() && pool.pop_front(&mut a).is_none());
        assert_eq!(a.len(), 0);
        assert_eq!(tags(&pool, &b), [101, 102, 103, 104, 105]);
        assert_eq!(pool.total(), 5);
    }

    #[test]
    fn growing_the_pool_never_moves_a_queued_message() {
        // A pool that moved its slots when it grew would copy every queued message in one
        // turn; chunks that never move make growth cost one allocation.
        let mut pool = OutPool::default();
        let mut q = Queue::default();
        assert!(pool.push_back(&mut q, msg(1)));
        let first: *const Outgoing = pool.front_mut(&q).unwrap();
        for i in 0..20 * CHUNK {
            assert!(pool.push_back(&mut q, msg(i as u8)));
        }
        let still: *const Outgoing = pool.front_mut(&q).unwrap();
        assert_eq!(first, still, "the oldest message moved when the pool grew");
        assert_eq!(pool.capacity(), 21 * CHUNK);
        assert_eq!(pool.total(), 20 * CHUNK + 1);
    }

    #[test]
    fn draining_to_empty_resets_the_tail() {
        let mut pool = OutPool::default();
        let mut q = Queue::default();
        assert!(pool.push_back(&mut q, msg(1)));
        assert_eq!(pool.pop_front(&mut q).unwrap().data[0], 1);
        assert!(q.is_empty());
        // A push after draining must start a new list, not link from a stale tail.
        assert!(pool.push_back(&mut q, msg(2)));
        assert!(pool.push_back(&mut q, msg(3)));
        assert_eq!(tags(&pool, &q), [2, 3]);
    }

    #[test]
    fn idle_shrink_only_when_nothing_is_queued() {
        let mut pool = OutPool::default();
        let mut q = Queue::default();
        for i in 0..200 {
            assert!(pool.push_back(&mut q, msg(i as u8)));
        }
        pool.shrink_if_idle();
        assert!(pool.capacity() >= 200, "shrunk while messages were queued");
        pool.clear(&mut q);
        pool.shrink_if_idle();
        pool.release_retired(usize::MAX);
        assert!(pool.capacity() <= CHUNK);
        assert!(pool.push_back(&mut q, msg(7)));
        assert_eq!(tags(&pool, &q), [7]);
    }

    #[test]
    fn an_idle_pool_frees_its_chunks_a_few_at_a_time() {
        let mut pool = OutPool::default();
        let mut q = Queue::default();
        for i in 0..10 * CHUNK {
            assert!(pool.push_back(&mut q, msg(i as u8)));
        }
        pool.clear(&mut q);
        pool.shrink_if_idle();
        // Set aside, not freed yet: one chunk stays in use, nine wait.
        assert_eq!(pool.capacity(), 10 * CHUNK);
        // The pool works as usual meanwhile, on its first chunk only.
        for i in 0..3 {
            assert!(pool.push_back(&mut q, msg(i)));
        }
        assert_eq!(tags(&pool, &q), [0, 1, 2]);
        let chunk_bytes = CHUNK * std::mem::size_of::<Slot>();
        assert_eq!(pool.release_retired(4), (4 * chunk_bytes, true));
        assert_eq!(pool.capacity(), 6 * CHUNK);
        assert_eq!(pool.release_retired(4), (4 * chunk_bytes, true));
        assert_eq!(pool.release_retired(4), (chunk_bytes, false));
        assert_eq!(pool.release_retired(4), (0, false));
        assert_eq!(pool.capacity(), CHUNK);
        assert_eq!(tags(&pool, &q), [0, 1, 2]);
    }

    #[test]
    fn dropping_queued_messages_closes_their_fds() {
        use std::os::fd::{AsRawFd, OwnedFd};
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let fds: std::rc::Rc<[OwnedFd]> = std::rc::Rc::from(vec![w]);
        let mut m = msg(1);
        m.fds = Some(fds);
        let mut pool = OutPool::default();
        let mut q = Queue::default();
        assert!(pool.push_back(&mut q, m));
        let mut buf = [0u8; 1];
        // Still queued: the write end is open, so the read would block.
        assert_eq!(
            nix::unistd::read(r.as_raw_fd(), &mut buf),
            Err(nix::errno::Errno::EAGAIN)
        );
        pool.clear(&mut q);
        // Dropped with the queue: the pipe reports end of file.
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut buf), Ok(0));
    }

    #[test]
    fn random_operations_match_a_model() {
        use std::collections::VecDeque;
        let mut rng = crate::test_rng::Rng(0x5eed);
        let mut pool = OutPool::default();
        let mut queues: Vec<Queue> = (0..3).map(|_| Queue::default()).collect();
        let mut model: Vec<VecDeque<u8>> = vec![VecDeque::new(); 3];
        let mut tag = 0u8;
        let mut shrinks = 0;
        for step in 0..20_000 {
            let k = rng.below(3);
            // Slightly more pops than pushes, so the pool keeps draining to empty and the
            // idle shrink really runs between bursts.
            match rng.below(11) {
                0..=3 => {
                    tag = tag.wrapping_add(1);
                    assert!(pool.push_back(&mut queues[k], msg(tag)));
                    model[k].push_back(tag);
                }
                4..=9 => {
                    let got = pool.pop_front(&mut queues[k]).map(|m| m.data[0]);
                    assert_eq!(got, model[k].pop_front(), "step {step}");
                }
                _ if rng.chance(5) => {
                    pool.clear(&mut queues[k]);
                    model[k].clear();
                }
                _ => {
                    if pool.total() == 0 {
                        shrinks += 1;
                    }
                    pool.shrink_if_idle();
                }
            }
            for (q, m) in queues.iter().zip(&model) {
                assert_eq!(q.len(), m.len(), "step {step}");
                assert_eq!(q.is_empty(), m.is_empty(), "step {step}");
            }
            assert_eq!(pool.total(), model.iter().map(VecDeque::len).sum::<usize>());
        }
        for (q, m) in queues.iter().zip(&model) {
            assert_eq!(tags(&pool, q), m.iter().copied().collect::<Vec<_>>());
        }
        assert!(shrinks > 10, "the pool never drained: {shrinks}");
    }
}
