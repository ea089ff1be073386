//! A large incoming message, read straight into the buffer it will be relayed from.
//!
//! Small messages arrive whole in a shared receive buffer (`rx.rs`) and are relayed as
//! slices of it. A message longer than one read would otherwise be copied twice (a growing
//! reassembly buffer, then a buffer of its own); once its fixed header says how long it is,
//! the rest is received directly into a buffer of exactly that size.
//! After a large message the next read on that connection takes only the fixed header
//! (`header_first` in mod.rs): if that message is large too, all of its body goes straight
//! into its own buffer, instead of the first 32 KiB landing in a receive buffer and being
//! copied.
//!
//! The kernel receives straight into the not yet initialised rest of the buffer
//! ([`ZeroedOnDemand::recv_tail`]): nothing is zeroed first, so a peer that announces a large
//! message and then sends nothing commits no more memory than it has sent.

use crate::sys::{Received, ZeroedOnDemand};
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;

/// A message being received into its final buffer.
pub struct LargeRead {
    /// The message; initialized up to `filled` plus zeroed space for the next read.
    buf: ZeroedOnDemand,
    /// Bytes received so far (a prefix of the message).
    filled: usize,
}

impl LargeRead {
    /// Start receiving a message of `len` bytes whose first bytes are `prefix`
    /// (`prefix.len() < len`; a longer prefix is cut to `len`).
    pub fn new(len: usize, prefix: &[u8]) -> Self {
        let buf = ZeroedOnDemand::with_prefix(len, prefix);
        let filled = buf.initialized();
        LargeRead { buf, filled }
    }

    /// Bytes received so far (what the bus holds of this message: its quota charge).
    pub fn received(&self) -> usize {
        self.filled
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.filled
    }

    /// Receive at most `max` of the remaining bytes from socket `fd` (fds into `fds`, as
    /// [`crate::sys::recv_with_fds`]).
    pub fn recv(
        &mut self,
        fd: RawFd,
        max: usize,
        cmsg: &mut Vec<u8>,
        fds: &mut Vec<OwnedFd>,
    ) -> nix::Result<Received> {
        let r = self
            .buf
            .recv_tail(fd, max.min(self.remaining()), cmsg, fds)?;
        self.filled = self.buf.initialized();
        Ok(r)
    }

    /// Where the next read goes: at most `max` of the remaining bytes (zeroed first).
    #[cfg(test)]
    pub fn spare(&mut self, max: usize) -> &mut [u8] {
        let end = self.filled + max.min(self.remaining());
        let filled = self.filled;
        self.buf
            .prefix_mut(end)
            .get_mut(filled..)
            .unwrap_or(&mut [])
    }

    /// `n` more bytes were received into [`LargeRead::spare`].
    #[cfg(test)]
    pub fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.initialized());
    }

    /// The whole message, or None if bytes are still missing.
    pub fn finish(self) -> Option<Rc<[u8]>> {
        if self.filled < self.buf.len() {
            return None;
        }
        self.buf.finish()
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
    fn one_read_per_turn_takes_all_a_default_sender_can_queue() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        // A sender with Linux's default socket buffer (net.core.wmem_default, 212,992
        // bytes: the kernel doubles what SO_SNDBUF is given) queues this much before it
        // blocks. Alone, a large message's reads per turn must take all of it, or every
        // fill costs two reads and a turn between them (`large_discount`).
        let (tx, _rx) = UnixStream::pair().unwrap();
        nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::SndBuf, &(212_992 / 2))
            .unwrap();
        tx.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut queued = 0;
        while let Ok(n) = (&tx).write(&chunk) {
            queued += n;
        }
        assert!(queued > 100_000, "{queued}");
        let per_turn = super::super::READ_BUDGET * super::super::large_discount(false);
        assert!(per_turn >= queued, "{per_turn} < {queued}");
    }

    #[test]
    fn with_others_waiting_a_turn_reads_at_most_128_kib() {
        // What a call from another connection may wait behind while a large message is
        // read (bench/README.md, "1 MiB bodies"): the cap every large read had before.
        let per_turn = super::super::READ_BUDGET * super::super::large_discount(true);
        assert_eq!(per_turn, 128 * 1024);
    }

    #[test]
    fn zeroing_stays_just_ahead_of_the_data() {
        let mut lr = LargeRead::new(1 << 20, &[1; 16]);
        let _ = lr.spare(4096);
        assert_eq!(lr.buf.initialized(), 16 + 4096);
        lr.advance(100);
        let _ = lr.spare(4096);
        assert_eq!(lr.buf.initialized(), 116 + 4096);
    }
}
