//! A large incoming message, read straight into the buffer it will be relayed from.
//!
//! Small messages arrive whole in the loop's scratch buffer and are copied once into their
//! shared buffer. A message longer than one read would otherwise be copied three times
//! (scratch, then a growing reassembly buffer, then the shared buffer); once its fixed header
//! says how long it is, the rest is received directly into a buffer of exactly that size.
//!
//! The buffer is zeroed only just ahead of each read, so a peer that announces a large
//! message and then sends nothing commits no more memory than it has sent plus one read.

use std::mem::MaybeUninit;
use std::rc::Rc;

/// A message being received into its final buffer.
pub struct LargeRead {
    buf: Rc<[MaybeUninit<u8>]>,
    /// Bytes received so far (a prefix of the message).
    filled: usize,
    /// Bytes initialized so far (`filled` plus zeroed space for the next read).
    init: usize,
}

impl LargeRead {
    /// Start receiving a message of `len` bytes whose first bytes are `prefix`
    /// (`prefix.len() < len`; a longer prefix is cut to `len`).
    pub fn new(len: usize, prefix: &[u8]) -> Self {
        let mut buf = Rc::<[u8]>::new_uninit_slice(len);
        let take = prefix.len().min(len);
        if let (Some(dst), Some(src)) = (
            Rc::get_mut(&mut buf).and_then(|b| b.get_mut(..take)),
            prefix.get(..take),
        ) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = MaybeUninit::new(*s);
            }
        }
        LargeRead {
            buf,
            filled: take,
            init: take,
        }
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.filled
    }

    /// Where the next read goes: at most `max` of the remaining bytes.
    pub fn spare(&mut self, max: usize) -> &mut [u8] {
        let end = self.filled + max.min(self.remaining());
        let Some(buf) = Rc::get_mut(&mut self.buf) else {
            // Never shared before `finish`, so this cannot happen; an empty read target
            // makes the caller see end-of-stream and drop the connection.
            return &mut [];
        };
        if end > self.init {
            if let Some(fresh) = buf.get_mut(self.init..end) {
                fresh.fill(MaybeUninit::new(0));
            }
            self.init = end;
        }
        let Some(spare) = buf.get_mut(self.filled..end) else {
            return &mut [];
        };
        // SAFETY: every byte below `init` (and `end <= init`) was written above, by `new`, or
        // by an earlier read; `MaybeUninit<u8>` and `u8` have the same layout.
        unsafe { &mut *(spare as *mut [MaybeUninit<u8>] as *mut [u8]) }
    }

    /// `n` more bytes were received into [`LargeRead::spare`].
    pub fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.init);
    }

    /// The whole message, or None if bytes are still missing.
    pub fn finish(self) -> Option<Rc<[u8]>> {
        if self.filled < self.buf.len() {
            return None;
        }
        // SAFETY: `filled == len`, and bytes below `filled` are initialized (see `spare`).
        Some(unsafe { self.buf.assume_init() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_prefix_and_reads_in_order() {
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut lr = LargeRead::new(msg.len(), &msg[..300]);
        assert_eq!(lr.remaining(), msg.len() - 300);
        let mut pos = 300;
        for step in [1usize, 4096, 7, 65536, 100_000] {
            let dst = lr.spare(step);
            let n = dst.len().min(msg.len() - pos);
            assert!(dst.len() <= step);
            dst[..n].copy_from_slice(&msg[pos..pos + n]);
            lr.advance(n);
            pos += n;
            if lr.remaining() == 0 {
                assert_eq!(pos, msg.len());
                assert_eq!(&lr.finish().unwrap()[..], &msg[..]);
                return;
            }
        }
        panic!("message never completed");
    }

    #[test]
    fn short_read_leaves_the_rest_pending() {
        let mut lr = LargeRead::new(10, b"abc");
        let dst = lr.spare(100);
        assert_eq!(dst.len(), 7);
        assert!(dst.iter().all(|&b| b == 0), "spare space is zeroed");
        dst[..2].copy_from_slice(b"de");
        lr.advance(2);
        assert_eq!(lr.remaining(), 5);
        // The next read starts right after what was received.
        lr.spare(5).copy_from_slice(b"fghij");
        lr.advance(5);
        assert_eq!(&lr.finish().unwrap()[..], b"abcdefghij");
    }

    #[test]
    fn advance_never_passes_initialized_space() {
        let mut lr = LargeRead::new(8, b"");
        let _ = lr.spare(2);
        // A caller bug claiming more than it was given must not expose uninitialized bytes.
        lr.advance(8);
        assert_eq!(lr.remaining(), 6);
        assert!(
            lr.finish().is_none(),
            "an incomplete message must not finish"
        );
    }

    #[test]
    fn zeroing_stays_just_ahead_of_the_data() {
        let mut lr = LargeRead::new(1 << 20, &[1; 16]);
        let _ = lr.spare(4096);
        assert_eq!(lr.init, 16 + 4096);
        lr.advance(100);
        let _ = lr.spare(4096);
        assert_eq!(lr.init, 116 + 4096);
    }
}
