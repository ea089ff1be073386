//! Reference-counted receive buffers: small messages are read into one of these and relayed
//! as slices of it (`Message::parse_framed` keeps the buffer and a range), so forwarding a
//! message neither allocates nor copies it.
//!
//! A buffer can be written only while nothing else holds it. A relayed message that is
//! written at the end of the turn releases it by the next read; one that waits in a queue
//! behind others is copied out when queued (`Bus::enqueue`), so at most one message per
//! queue pins a buffer (and is charged for all of it). When the current buffer is pinned,
//! the next free one of a small pool is used, else a fresh one replaces the pool's oldest
//! (which lives on, in its slices, until they are written).
//!
//! A read that brought fds is followed at once by another, before the turn's writes (the
//! kernel ends a read after the data that carried fds, so only another read tells whether
//! more is queued): the relayed message still pins the first buffer then, so that read
//! goes to the pool's second one, and fd-carrying messages alternate between the two. No
//! buffer is allocated for it.

use std::rc::Rc;

/// Buffers kept for reuse; a turn rarely pins more than one or two.
const POOL: usize = 4;

/// The pool; `bufs[0]` is the buffer of the current read.
pub struct RxBuffers {
    bufs: Vec<Rc<[u8]>>,
    size: usize,
}

impl RxBuffers {
    /// A pool of buffers of `size` bytes (allocated when first needed).
    pub fn new(size: usize) -> Self {
        RxBuffers {
            bufs: Vec::new(),
            size,
        }
    }

    /// A buffer nobody else holds, made current, to receive into.
    pub fn writable(&mut self) -> &mut [u8] {
        if self.bufs.first().is_none_or(|b| Rc::strong_count(b) > 1) {
            match self.bufs.iter().position(|b| Rc::strong_count(b) == 1) {
                Some(i) => self.bufs.swap(0, i),
                None => {
                    // `collect` writes the zeros straight into the Rc's allocation.
                    let fresh: Rc<[u8]> = std::iter::repeat_n(0u8, self.size).collect();
                    if self.bufs.len() >= POOL {
                        self.bufs.pop();
                    }
                    self.bufs.insert(0, fresh);
                }
            }
        }
        match self.bufs.first_mut().and_then(Rc::get_mut) {
            Some(b) => b,
            // Unreachable: bufs[0] was just made unique.
            None => &mut [],
        }
    }

    /// The current buffer (what the last [`RxBuffers::writable`] returned), shared.
    #[inline]
    pub fn current(&self) -> Rc<[u8]> {
        self.bufs
            .first()
            .cloned()
            .unwrap_or_else(|| Rc::from(&[][..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_free_buffer_and_replaces_a_pinned_one() {
        let mut rx = RxBuffers::new(64);
        rx.writable()[0] = 1;
        let first = rx.current();
        assert_eq!(first[0], 1);
        drop(first);
        // Free again: the same buffer, with its bytes.
        assert_eq!(rx.writable()[0], 1);
        let pinned = rx.current();
        // Pinned: another buffer, and the pinned bytes stay as they were.
        rx.writable()[0] = 2;
        assert_eq!(pinned[0], 1);
        assert_eq!(rx.current()[0], 2);
        assert!(!Rc::ptr_eq(&pinned, &rx.current()));
        // More pinned buffers than the pool keeps: each read still gets a free one.
        let mut held = vec![pinned];
        for i in 0..2 * POOL {
            rx.writable()[0] = 10 + i as u8;
            held.push(rx.current());
        }
        for (i, b) in held.iter().enumerate().skip(1) {
            assert_eq!(b[0], 10 + (i - 1) as u8);
        }
        assert!(rx.bufs.len() <= POOL);
        assert_eq!(rx.writable().len(), 64);
    }
}
