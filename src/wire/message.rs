//! A received message: header parsed and validated in place, body validated against its
//! signature, and the patched header needed to relay it without touching the body.
//!
//! OWNER: wire helper. API below is fixed; bodies are to be written.

use super::{Endian, WireError};
use arrayvec::ArrayVec;
use std::ops::Range;
use std::rc::Rc;

/// Message type codes.
pub const METHOD_CALL: u8 = 1;
/// Message type codes.
pub const METHOD_RETURN: u8 = 2;
/// Message type codes.
pub const ERROR: u8 = 3;
/// Message type codes.
pub const SIGNAL: u8 = 4;

/// Header flag bits.
pub mod flags {
    /// Caller does not want a reply.
    pub const NO_REPLY_EXPECTED: u8 = 0x1;
    /// Do not activate a missing destination.
    pub const NO_AUTO_START: u8 = 0x2;
    /// Receiver may prompt the user.
    pub const ALLOW_INTERACTIVE_AUTHORIZATION: u8 = 0x4;
}

/// Header field codes.
pub mod field {
    /// PATH (`o`)
    pub const PATH: u8 = 1;
    /// INTERFACE (`s`)
    pub const INTERFACE: u8 = 2;
    /// MEMBER (`s`)
    pub const MEMBER: u8 = 3;
    /// ERROR_NAME (`s`)
    pub const ERROR_NAME: u8 = 4;
    /// REPLY_SERIAL (`u`)
    pub const REPLY_SERIAL: u8 = 5;
    /// DESTINATION (`s`)
    pub const DESTINATION: u8 = 6;
    /// SENDER (`s`)
    pub const SENDER: u8 = 7;
    /// SIGNATURE (`g`)
    pub const SIGNATURE: u8 = 8;
    /// UNIX_FDS (`u`)
    pub const UNIX_FDS: u8 = 9;
    /// CONTAINER_INSTANCE (`o`), set only by the bus for RequestHeader callers.
    pub const CONTAINER_INSTANCE: u8 = 10;
}

/// Size of the fixed part of the header.
pub const FIXED_HEADER_LEN: usize = 16;
/// Absolute protocol limit on a message's size.
pub const MAX_MESSAGE_SIZE: usize = 1 << 27;

/// From the first 16 bytes, the total length of the message (header, padding, body).
/// Checks the byte order, the protocol version and `max_size` (clamped to the protocol cap)
/// so a reader can refuse an oversized message before buffering it.
pub fn frame_len(fixed: &[u8; FIXED_HEADER_LEN], max_size: usize) -> Result<usize, WireError> {
    let _ = (fixed, max_size);
    todo!()
}

/// Where a string header field's bytes live in the message buffer (without the NUL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte.
    pub start: u32,
    /// Length in bytes.
    pub len: u32,
}

/// One top-level body argument, as seen by match rules (`argN`, `argNpath`, `arg0namespace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// A STRING.
    Str(&'a str),
    /// An OBJECT_PATH.
    Path(&'a str),
    /// Any other type.
    Other,
}

/// A validated message. Cheap to keep around: header fields are offsets into `data`.
#[derive(Debug, Clone)]
pub struct Message {
    data: Rc<[u8]>,
    /// Byte order the sender used (kept when relaying).
    pub endian: Endian,
    /// Message type (1-4, or an unknown type >= 5).
    pub msg_type: u8,
    /// Flags byte, relayed verbatim.
    pub flags: u8,
    /// Sender-chosen serial (non-zero).
    pub serial: u32,
    /// REPLY_SERIAL, if present.
    pub reply_serial: Option<u32>,
    /// UNIX_FDS, 0 if absent.
    pub unix_fds: u32,
    path: Option<Span>,
    interface: Option<Span>,
    member: Option<Span>,
    error_name: Option<Span>,
    destination: Option<Span>,
    signature: Option<Span>,
    /// Offset of the body (header + padding length).
    body_start: u32,
    /// True when the header carries SENDER or unknown fields (>= 10) that relaying must drop,
    /// so the zero-copy splice of the header fields is not possible.
    needs_rebuild: bool,
}

/// The header to send in front of a relayed message's untouched body.
#[derive(Debug, Clone)]
pub enum RelayHeader {
    /// Zero-copy case: `fixed` (16 bytes, fields length patched), then `data[middle]` (the
    /// sender's own header fields and padding, unchanged), then `tail` (the SENDER field, an
    /// optional CONTAINER_INSTANCE field, and padding to 8).
    Splice {
        /// Patched fixed header.
        fixed: [u8; FIXED_HEADER_LEN],
        /// Range of the original buffer holding the kept header fields, 8-aligned end.
        middle: Range<u32>,
        /// Appended fields and final padding.
        tail: ArrayVec<u8, 640>,
    },
    /// The header had fields to strip: a freshly built header (fixed part, fields, padding).
    Rebuilt(Vec<u8>),
}

impl Message {
    /// Parse and fully validate a complete message (`data.len()` equals `frame_len`).
    /// `n_fds` is how many fds arrived with it; UNIX_FDS must equal it.
    pub fn parse(data: Rc<[u8]>, n_fds: usize) -> Result<Message, WireError> {
        let _ = (data, n_fds);
        todo!()
    }

    /// The whole message as received.
    pub fn data(&self) -> &Rc<[u8]> {
        &self.data
    }

    fn span(&self, s: Option<Span>) -> Option<&str> {
        let s = s?;
        let b = self.data.get(s.start as usize..(s.start + s.len) as usize)?;
        std::str::from_utf8(b).ok()
    }

    /// PATH field.
    pub fn path(&self) -> Option<&str> {
        self.span(self.path)
    }
    /// INTERFACE field.
    pub fn interface(&self) -> Option<&str> {
        self.span(self.interface)
    }
    /// MEMBER field.
    pub fn member(&self) -> Option<&str> {
        self.span(self.member)
    }
    /// ERROR_NAME field.
    pub fn error_name(&self) -> Option<&str> {
        self.span(self.error_name)
    }
    /// DESTINATION field.
    pub fn destination(&self) -> Option<&str> {
        self.span(self.destination)
    }
    /// SIGNATURE field ("" when absent).
    pub fn signature(&self) -> &str {
        self.span(self.signature).unwrap_or("")
    }
    /// Body range within `data()`.
    pub fn body_range(&self) -> Range<usize> {
        self.body_start as usize..self.data.len()
    }
    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.data[self.body_range()]
    }
    /// NO_REPLY_EXPECTED set.
    pub fn no_reply_expected(&self) -> bool {
        self.flags & flags::NO_REPLY_EXPECTED != 0
    }
    /// NO_AUTO_START set.
    pub fn no_auto_start(&self) -> bool {
        self.flags & flags::NO_AUTO_START != 0
    }

    /// Top-level body argument `n` (0-based), walking the already validated body.
    /// `None` if the body has fewer arguments.
    pub fn arg(&self, n: usize) -> Option<Arg<'_>> {
        let _ = n;
        todo!()
    }

    /// The header to relay this message with: SENDER set to `sender`, unknown fields
    /// (code >= 10) removed, and, when `container_instance` is given, field 10 set to it
    /// (for receivers that called Containers1.RequestHeader). Written in `self.endian`.
    pub fn relay_header(&self, sender: &str, container_instance: Option<&str>) -> RelayHeader {
        let _ = (sender, container_instance, self.needs_rebuild);
        todo!()
    }
}
