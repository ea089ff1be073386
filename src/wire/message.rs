//! A received message: its length and fd count read from the header before it is complete,
//! then the header parsed and validated in place, the body validated against its signature,
//! and the header to relay it with (SENDER stamped, unknown fields dropped), sent in front
//! of the untouched body so that relaying never copies it.

use super::body::{self, Cursor, MAX_ARRAY_LEN};
use super::names;
use super::signature::{is_single_complete_type, is_valid_signature};
use super::{align, Endian, WireError};
use arrayvec::ArrayVec;
use std::num::NonZeroU32;
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
    let endian = Endian::from_mark(fixed[0]).ok_or(WireError::BadEndian)?;
    if fixed[3] != 1 {
        return Err(WireError::BadVersion);
    }
    let body_len = u64::from(endian.u32([fixed[4], fixed[5], fixed[6], fixed[7]]));
    let fields_len = u64::from(endian.u32([fixed[12], fixed[13], fixed[14], fixed[15]]));
    // The header fields are an array, so the array cap applies to them too.
    if fields_len > MAX_ARRAY_LEN as u64 {
        return Err(WireError::TooLarge);
    }
    // Both lengths are < 2^32, so this u64 sum cannot overflow even on 32-bit targets.
    let total = ((FIXED_HEADER_LEN as u64 + fields_len + 7) & !7) + body_len;
    if total > max_size.min(MAX_MESSAGE_SIZE) as u64 {
        return Err(WireError::TooLarge);
    }
    Ok(total as usize)
}

/// Expected variant signature of known header fields 1-9 (index 0 unused).
const FIELD_TYPES: [u8; 10] = [0, b'o', b's', b's', b's', b'u', b's', b's', b'g', b'u'];

/// Path reserved for library-internal messages; a peer sending it is broken.
const LOCAL_PATH: &str = "/org/freedesktop/DBus/Local";
/// Interface reserved for library-internal messages.
const LOCAL_INTERFACE: &str = "org.freedesktop.DBus.Local";

/// Capacity of [`RelayHeader::Splice`]'s tail: a SENDER field with any unique name this
/// bus assigns (`:1.` and a u64: 4 + 4 + 23 + 1 bytes, padded to 32) or the driver's name
/// fits; anything longer (a Containers1 instance field for a RequestHeader receiver) takes
/// the `Rebuilt` path. Kept this small because every relayed message is moved and queued
/// with it inline: at 32 an `Outgoing` (112 bytes rather than 208) is moved without
/// `memcpy` calls (rtt: 91 instructions per forwarded message less than at 128).
pub const TAIL_CAP: usize = 32;

#[inline]
fn hdr_err(why: &'static str) -> WireError {
    WireError::BadHeader(why)
}

/// Walks the `a(yv)` header fields of a validated message: (code, struct byte range).
struct Fields<'a> {
    c: Cursor<'a>,
}

impl<'a> Fields<'a> {
    fn new(endian: Endian, data: &'a [u8]) -> Self {
        let len = data
            .get(12..16)
            .and_then(|w| w.try_into().ok())
            .map_or(0, |w| endian.u32(w) as usize);
        let end = (FIXED_HEADER_LEN + len).min(data.len());
        let buf = data.get(..end).unwrap_or(&[]);
        Fields {
            c: Cursor::new(endian, buf, FIXED_HEADER_LEN),
        }
    }
}

impl Iterator for Fields<'_> {
    type Item = (u8, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.c.pos >= self.c.buf.len() {
            return None;
        }
        self.c.pad(8).ok()?;
        let start = self.c.pos;
        let code = self.c.u8().ok()?;
        let (_, end) = body::skip_value(self.c.endian, b"v", 0, self.c.buf, self.c.pos, 2)?;
        self.c.pos = end;
        Some((code, start..end))
    }
}

/// Byte sink for header writing, so the splice tail and the rebuilt header share one writer.
trait Sink {
    fn put(&mut self, b: &[u8]) -> bool;
    fn len(&self) -> usize;
    /// Zero bytes up to a multiple of 8 (the sink's start is 8-aligned in the message).
    fn pad8(&mut self) -> bool {
        let n = align(self.len(), 8) - self.len();
        self.put(&[0u8; 8][..n])
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, b: &[u8]) -> bool {
        self.extend_from_slice(b);
        true
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl<const N: usize> Sink for ArrayVec<u8, N> {
    fn put(&mut self, b: &[u8]) -> bool {
        self.try_extend_from_slice(b).is_ok()
    }
    fn len(&self) -> usize {
        ArrayVec::len(self)
    }
}

/// Append one 8-aligned header field holding a STRING-like value of type `t`.
fn put_str_field(s: &mut impl Sink, e: Endian, code: u8, t: u8, v: &str) -> bool {
    let Ok(len) = u32::try_from(v.len()) else {
        return false;
    };
    s.pad8()
        && s.put(&[code, 1, t, 0])
        && s.put(&e.put_u32(len))
        && s.put(v.as_bytes())
        && s.put(&[0])
}

/// Append SENDER and the optional CONTAINER_INSTANCE; returns the length before the final
/// padding (the header field array ends there), having written that padding.
fn put_bus_fields(
    s: &mut impl Sink,
    e: Endian,
    sender: &str,
    container_instance: Option<&str>,
) -> Option<usize> {
    if !put_str_field(s, e, field::SENDER, b's', sender) {
        return None;
    }
    if let Some(ci) = container_instance {
        if !put_str_field(s, e, field::CONTAINER_INSTANCE, b'o', ci) {
            return None;
        }
    }
    let unpadded = s.len();
    s.pad8().then_some(unpadded)
}

/// The SENDER field for `sender`, padded to 8 (it starts 8-aligned: at the body start),
/// and its length before the padding; None if it does not fit [`TAIL_CAP`]. Written in
/// one go: this is per relayed message.
#[inline]
fn sender_tail(e: Endian, sender: &str) -> Option<(ArrayVec<u8, TAIL_CAP>, usize)> {
    let n = sender.len();
    let unpadded = 8 + n + 1;
    if unpadded > TAIL_CAP {
        return None;
    }
    let mut t = [0u8; TAIL_CAP];
    t[..4].copy_from_slice(&[field::SENDER, 1, b's', 0]);
    t[4..8].copy_from_slice(&e.put_u32(n as u32));
    t[8..8 + n].copy_from_slice(sender.as_bytes());
    // The NUL and the padding are the array's zeros.
    let mut tail = ArrayVec::from(t);
    tail.truncate(align(unpadded, 8));
    Some((tail, unpadded))
}

/// The header fields of one message, as [`HeaderFields::walk`] found them.
#[derive(Default, Debug, PartialEq, Clone, Copy)]
struct HeaderFields {
    reply_serial: Option<u32>,
    /// Offset of REPLY_SERIAL's value in the message (0 without one), for [`HeaderCache`].
    reply_serial_at: u32,
    unix_fds: u32,
    path: Option<Span>,
    interface: Option<Span>,
    member: Option<Span>,
    error_name: Option<Span>,
    destination: Option<Span>,
    signature: Option<Span>,
    needs_rebuild: bool,
    /// Bit `code` set for each known field present.
    seen: u16,
}

impl HeaderFields {
    /// [`HeaderFields::walk`] into fresh fields.
    #[inline]
    fn walked(endian: Endian, hdr: &[u8], fields_end: usize) -> Result<HeaderFields, WireError> {
        let mut f = HeaderFields::default();
        f.walk(endian, hdr, fields_end)?;
        Ok(f)
    }

    /// Walk and validate the `a(yv)` header field array (D-Bus specification, "Message
    /// Format": each struct 8-aligned, padding zero). `hdr` is the message up to the body
    /// (the fixed header included, so offsets are the message's), `fields_end` where the
    /// array ends in it; `hdr.len()` is `fields_end` rounded up to 8 (the caller checked the
    /// message is that long). Every padding byte of the header, the final padding included,
    /// is checked to be zero. A function of its own, writing through `self`, so that the
    /// loop does not keep [`Message::parse_framed`]'s buffer, range and return slot live.
    ///
    /// Known fields (codes 1-9) have a one-type signature ("Header Fields" table), so each
    /// starts with an 8-byte word: code, signature length 1, type, NUL, then the u32 value
    /// or the string length (already 4-aligned, so without padding), or a SIGNATURE's
    /// length byte. They are read with that one word; anything else takes the general path
    /// ([`Self::other_field`]).
    fn walk(&mut self, endian: Endian, hdr: &[u8], fields_end: usize) -> Result<(), WireError> {
        // Field contents are bounded by `fields`, so no field runs into the padding or body.
        let fields = hdr.get(..fields_end).ok_or(hdr_err("truncated"))?;
        let mut pos = FIXED_HEADER_LEN;
        // End of the last field (of the fixed header if there is none).
        let mut end = FIXED_HEADER_LEN;
        while pos < fields_end {
            // `pos` is 8-aligned and below `fields_end`, so these 8 bytes lie in `hdr`.
            let w: [u8; 8] = hdr
                .get(pos..pos + 8)
                .and_then(|w| w.try_into().ok())
                .ok_or(hdr_err("truncated"))?;
            let [code, 1, t, 0, a, b, c, d] = w else {
                end = self.other_field(endian, fields, pos)?;
                pos = next_field(hdr, end)?;
                continue;
            };
            let Some(&want) = FIELD_TYPES.get(usize::from(code)).filter(|_| code != 0) else {
                end = self.other_field(endian, fields, pos)?;
                pos = next_field(hdr, end)?;
                continue;
            };
            let bit = 1u16 << code;
            if self.seen & bit != 0 {
                return Err(hdr_err("duplicate header field"));
            }
            self.seen |= bit;
            if t != want {
                return Err(hdr_err("header field has the wrong type"));
            }
            let value = endian.u32([a, b, c, d]);
            match want {
                b's' | b'o' => {
                    // The string: `value` bytes at pos + 8, then its NUL.
                    let start = pos + 8;
                    let s = fields
                        .get(start..)
                        .and_then(|r| r.get(..value as usize))
                        .ok_or(hdr_err("truncated"))?;
                    end = start + s.len() + 1;
                    if fields.get(end - 1) != Some(&0) {
                        return Err(hdr_err("string not NUL-terminated"));
                    }
                    self.string_field(code, s, Span::at(start, value))?;
                }
                b'u' => {
                    end = pos + 8;
                    if end > fields_end {
                        return Err(hdr_err("truncated"));
                    }
                    if code == field::REPLY_SERIAL {
                        if value == 0 {
                            return Err(hdr_err("REPLY_SERIAL 0"));
                        }
                        self.reply_serial = Some(value);
                        self.reply_serial_at = (pos + 4) as u32;
                    } else {
                        self.unix_fds = value;
                    }
                }
                _ => {
                    // SIGNATURE: length byte `a`, the bytes, NUL.
                    let start = pos + 5;
                    let s = fields
                        .get(start..start + usize::from(a))
                        .ok_or(hdr_err("truncated"))?;
                    end = start + s.len() + 1;
                    if fields.get(end - 1) != Some(&0) {
                        return Err(hdr_err("signature not NUL-terminated"));
                    }
                    if !is_valid_signature(s) {
                        return Err(WireError::BadSignature);
                    }
                    self.signature = Span::at(start, u32::from(a));
                }
            }
            pos = next_field(hdr, end)?;
        }
        // An array may not end in padding: its length must end at the last field's end.
        if end != fields_end {
            return Err(hdr_err("field array ends inside padding"));
        }
        Ok(())
    }

    /// Check and record the STRING or OBJECT_PATH header field `code` (1-4, 6 or 7) with
    /// bytes `s` at `span`. The name and path grammars admit ASCII only, so passing them
    /// also proves the value valid UTF-8 without NUL.
    // One call site: always inlined.
    #[inline(always)]
    fn string_field(&mut self, code: u8, s: &[u8], span: Option<Span>) -> Result<(), WireError> {
        match code {
            field::PATH => {
                if !names::object_path_bytes(s) {
                    return Err(hdr_err("invalid PATH"));
                }
                if s == LOCAL_PATH.as_bytes() {
                    return Err(hdr_err("reserved local PATH"));
                }
                self.path = span;
            }
            field::INTERFACE => {
                if !names::interface_bytes(s) {
                    return Err(hdr_err("invalid INTERFACE"));
                }
                if s == LOCAL_INTERFACE.as_bytes() {
                    return Err(hdr_err("reserved local INTERFACE"));
                }
                self.interface = span;
            }
            field::MEMBER => {
                if !names::member_bytes(s) {
                    return Err(hdr_err("invalid MEMBER"));
                }
                self.member = span;
            }
            field::ERROR_NAME => {
                if !names::interface_bytes(s) {
                    return Err(hdr_err("invalid ERROR_NAME"));
                }
                self.error_name = span;
            }
            field::DESTINATION => {
                if !names::bus_name_bytes(s) {
                    return Err(hdr_err("invalid DESTINATION"));
                }
                self.destination = span;
            }
            _ => {
                // SENDER, the only string code left: replaced when relaying, so the old one
                // must go.
                if !names::bus_name_bytes(s) {
                    return Err(hdr_err("invalid SENDER"));
                }
                self.needs_rebuild = true;
            }
        }
        Ok(())
    }

    /// A field that does not start with a known code and a one-byte signature: an unknown
    /// field (code >= 10, any well-formed value; dropped when relaying), or a malformed one.
    /// Returns the field's end.
    #[cold]
    fn other_field(
        &mut self,
        endian: Endian,
        fields: &[u8],
        pos: usize,
    ) -> Result<usize, WireError> {
        let mut c = Cursor::new(endian, fields, pos);
        let code = c.u8().map_err(hdr_err)?;
        let vsig = c.sig().map_err(hdr_err)?;
        if code == 0 {
            return Err(hdr_err("field code 0"));
        }
        if FIELD_TYPES.get(usize::from(code)).is_some() {
            let bit = 1u16 << code;
            if self.seen & bit != 0 {
                return Err(hdr_err("duplicate header field"));
            }
            // A known field's signature is one type code, so this one is wrong.
            return Err(hdr_err("header field has the wrong type"));
        }
        if !is_single_complete_type(vsig) {
            return Err(hdr_err("bad variant signature in unknown field"));
        }
        // Inside the header's array, struct and variant: three levels deep.
        let end = body::validate_values(endian, vsig, fields, c.pos, 3).map_err(hdr_err)?;
        self.needs_rebuild = true;
        Ok(end)
    }
}

/// Where the header field after one ending at `end` starts: `end` rounded up to 8, the
/// padding bytes in between checked to be zero. `hdr` (the header up to the body) holds
/// the 8-byte word they end, so they are tested with one load and a shift.
#[inline(always)]
fn next_field(hdr: &[u8], end: usize) -> Result<usize, WireError> {
    let k = end & 7;
    if k == 0 {
        return Ok(end);
    }
    let start = end - k;
    let w: [u8; 8] = hdr
        .get(start..start + 8)
        .and_then(|w| w.try_into().ok())
        .ok_or(hdr_err("truncated"))?;
    // Little-endian load: the bytes from offset k on are the bits from 8 k up.
    if u64::from_le_bytes(w) >> (8 * k) != 0 {
        return Err(hdr_err("non-zero padding"));
    }
    Ok(start + 8)
}

/// Largest header a [`HeaderCache`] keeps, counted from the fields length (offset 12) to
/// the body; longer ones are walked every time.
pub const HEADER_CACHE_CAP: usize = 256;

/// The header of the last valid message a connection sent, with the fields its walk found,
/// so that the next message's header fields need not be walked when they repeat these
/// byte for byte, as a client calling the same method again, a service replying to the
/// same caller or emitting the same signal does. Validating the header fields is a function
/// of the byte order and the bytes from the fields length to the body (offsets included),
/// so equal bytes are equally valid and give equal fields; the one value allowed to differ
/// is REPLY_SERIAL's, whose only rule (not 0) is checked on every hit. A miss costs one
/// failed comparison and a copy of the new header (at most [`HEADER_CACHE_CAP`] bytes).
/// One per connection: the reactor owns it next to the connection's receive state.
#[derive(Default)]
pub struct HeaderCache {
    /// Byte order of the cached header; `None` while empty.
    endian: Option<Endian>,
    /// The message's bytes from offset [`CACHE_FROM`] (the fields length) to the body.
    key: ArrayVec<u8, HEADER_CACHE_CAP>,
    /// What the walk found.
    fields: HeaderFields,
}

/// Where a [`HeaderCache`] key starts in the message: the fields length (bytes 0..12, the
/// byte order, type, flags, body length and serial, are checked for every message anyway).
const CACHE_FROM: usize = 12;

impl HeaderCache {
    /// Whether the header fields of `hdr` (a message up to its body) are the cached ones;
    /// then [`HeaderCache::fields`] are its fields, REPLY_SERIAL's value included.
    #[inline(always)]
    fn lookup(&mut self, endian: Endian, hdr: &[u8]) -> bool {
        let Some(key) = hdr.get(CACHE_FROM..) else {
            return false;
        };
        if self.endian != Some(endian) || self.key.len() != key.len() {
            return false;
        }
        if self.fields.reply_serial_at != 0 {
            // Copy this message's REPLY_SERIAL into the key, so the comparison skips it.
            let at = self.fields.reply_serial_at as usize - CACHE_FROM;
            let (Some(v), Some(k)) = (key.get(at..at + 4), self.key.get_mut(at..at + 4)) else {
                return false;
            };
            let serial = endian.u32([v[0], v[1], v[2], v[3]]);
            if serial == 0 {
                // Invalid: the walk rejects it.
                return false;
            }
            k.copy_from_slice(v);
            self.fields.reply_serial = Some(serial);
        }
        self.key.as_slice() == key
    }

    /// Walk the header fields of `hdr` (a message up to its body, the fields ending at
    /// `fields_end`) into [`HeaderCache::fields`] and remember `hdr` as their key. Walked in
    /// place, so that the parse reads the fields from one place, hit or miss (with two, it
    /// kept a pointer to each field for either). A walk that fails leaves the cache as it
    /// was. The fields are kept even when `hdr` is too long to be a key (then nothing can
    /// hit them).
    #[inline]
    fn refill(&mut self, endian: Endian, hdr: &[u8], fields_end: usize) -> Result<(), WireError> {
        let old = std::mem::take(&mut self.fields);
        if let Err(e) = self.fields.walk(endian, hdr, fields_end) {
            self.fields = old;
            return Err(e);
        }
        self.key.clear();
        self.endian = None;
        if let Some(key) = hdr.get(CACHE_FROM..) {
            if self.key.try_extend_from_slice(key).is_ok() {
                self.endian = Some(endian);
            }
        }
        Ok(())
    }
}

/// Where a string header field's bytes live in the message (without the NUL). The start is
/// never 0 (fields follow the fixed header), so an `Option<Span>` takes no more room than a
/// `Span`: the parsed header is smaller and cheaper to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte.
    pub start: NonZeroU32,
    /// Length in bytes.
    pub len: u32,
}

impl Span {
    /// The span of `len` bytes at `start`; `None` if `start` is 0 (no header field is
    /// there). Offsets fit in u32: a message is at most 128 MiB.
    #[inline]
    fn at(start: usize, len: u32) -> Option<Span> {
        NonZeroU32::new(start as u32).map(|start| Span { start, len })
    }

    /// The byte range.
    #[inline]
    pub fn range(self) -> Range<usize> {
        let start = self.start.get() as usize;
        start..start + self.len as usize
    }
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

/// A validated message. Cheap to keep around: header fields are offsets into its bytes,
/// which may be a slice of a larger shared receive buffer (`buffer`, from `base`), so that
/// relaying a small message neither allocates nor copies it.
#[derive(Debug, Clone)]
pub struct Message {
    buffer: Rc<[u8]>,
    /// Offset of the message in `buffer`.
    base: u32,
    /// Length of the message.
    len: u32,
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
// The inline tail is deliberate: the splice path is per relayed message and must not allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RelayHeader {
    /// Zero-copy case: `fixed` (16 bytes, fields length patched), then `buffer[middle]` (the
    /// sender's own header fields and padding, unchanged), then `tail` (the SENDER field, an
    /// optional CONTAINER_INSTANCE field, and padding to 8).
    Splice {
        /// Patched fixed header.
        fixed: [u8; FIXED_HEADER_LEN],
        /// Range of the message's [`Message::buffer`] holding the kept header fields,
        /// 8-aligned end.
        middle: Range<u32>,
        /// Appended fields and final padding.
        tail: ArrayVec<u8, TAIL_CAP>,
    },
    /// The header had fields to strip: a freshly built header (fixed part, fields, padding).
    Rebuilt(Vec<u8>),
}

// By hand: the derived clone copies the tail (an `ArrayVec`) byte by byte, about 120
// instructions per copy of a broadcast (fanout10); one slice copy instead.
impl Clone for RelayHeader {
    fn clone(&self) -> RelayHeader {
        match self {
            RelayHeader::Splice {
                fixed,
                middle,
                tail,
            } => {
                let mut t = ArrayVec::new();
                // Cannot fail: the same capacity.
                let _ = t.try_extend_from_slice(tail);
                RelayHeader::Splice {
                    fixed: *fixed,
                    middle: middle.clone(),
                    tail: t,
                }
            }
            RelayHeader::Rebuilt(h) => RelayHeader::Rebuilt(h.clone()),
        }
    }
}

impl Message {
    /// Parse and fully validate a complete message (`data.len()` equals `frame_len`).
    /// `n_fds` is how many fds arrived with it; UNIX_FDS must equal it.
    pub fn parse(data: Rc<[u8]>, n_fds: usize) -> Result<Message, WireError> {
        let len = data.len();
        Self::parse_in(data, 0..len, n_fds)
    }

    /// [`Message::parse`] of the message `buffer[range]`, kept as a slice of `buffer`.
    pub fn parse_in(
        buffer: Rc<[u8]>,
        range: Range<usize>,
        n_fds: usize,
    ) -> Result<Message, WireError> {
        let fixed: &[u8; FIXED_HEADER_LEN] = buffer
            .get(range.clone())
            .and_then(|m| m.first_chunk())
            .ok_or(hdr_err("shorter than the fixed header"))?;
        if frame_len(fixed, MAX_MESSAGE_SIZE)? != range.len() {
            return Err(hdr_err("length does not match the header"));
        }
        let m = Self::parse_framed(buffer, range, n_fds)?;
        if m.unix_fds as usize != n_fds {
            return Err(WireError::BadFds);
        }
        Ok(m)
    }

    /// Parse and fully validate a message that [`frame_len`] framed (so `buffer[range]` is
    /// exactly one message and its fixed header's lengths were checked), in one walk of its
    /// header. The message keeps `buffer` (shared, not copied) and its place in it.
    /// `fds_available` is how many received fds it may claim: its UNIX_FDS may not exceed
    /// that ([`WireError::BadFds`]); the caller then takes [`Message::unix_fds`] of them.
    pub fn parse_framed(
        buffer: Rc<[u8]>,
        range: Range<usize>,
        fds_available: usize,
    ) -> Result<Message, WireError> {
        Self::parse_framed_in(buffer, range, fds_available, None)
    }

    /// [`Message::parse_framed`] for a connection's next message, with the connection's
    /// [`HeaderCache`]: when the header fields repeat the last valid ones byte for byte
    /// (REPLY_SERIAL's value aside), they are not walked again.
    pub fn parse_framed_cached(
        buffer: Rc<[u8]>,
        range: Range<usize>,
        fds_available: usize,
        cache: &mut HeaderCache,
    ) -> Result<Message, WireError> {
        Self::parse_framed_in(buffer, range, fds_available, Some(cache))
    }

    #[inline(always)]
    fn parse_framed_in(
        buffer: Rc<[u8]>,
        range: Range<usize>,
        fds_available: usize,
        cache: Option<&mut HeaderCache>,
    ) -> Result<Message, WireError> {
        let (base, len) = (range.start, range.len());
        // Offsets are u32 throughout: a message is at most 128 MiB, a receive buffer less.
        if u32::try_from(range.end).is_err() {
            return Err(WireError::TooLarge);
        }
        let data: &[u8] = buffer.get(range).ok_or(hdr_err("truncated"))?;
        let fixed: &[u8; FIXED_HEADER_LEN] = data
            .get(..FIXED_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(hdr_err("shorter than the fixed header"))?;
        let endian = Endian::from_mark(fixed[0]).ok_or(WireError::BadEndian)?;
        let msg_type = fixed[1];
        if msg_type == 0 {
            return Err(WireError::BadType);
        }
        let serial = endian.u32([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if serial == 0 {
            return Err(WireError::ZeroSerial);
        }
        let fields_len = endian.u32([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        // frame_len bounded these, so no overflow and both lie within `data`.
        let fields_end = FIXED_HEADER_LEN + fields_len;
        let body_start = align(fields_end, 8);
        let hdr = data.get(..body_start).ok_or(hdr_err("truncated"))?;

        let flags = fixed[2];
        // The fields are read where they are (in the cache on a hit), not copied out first.
        let walked: HeaderFields;
        let f: &HeaderFields = match cache {
            Some(cache) => {
                if !cache.lookup(endian, hdr) {
                    cache.refill(endian, hdr, fields_end)?;
                }
                &cache.fields
            }
            None => {
                walked = HeaderFields::walked(endian, hdr, fields_end)?;
                &walked
            }
        };
        let HeaderFields {
            reply_serial,
            reply_serial_at: _,
            unix_fds,
            path,
            interface,
            member,
            error_name,
            destination,
            signature,
            needs_rebuild,
            seen,
        } = *f;

        let need: u16 = match msg_type {
            METHOD_CALL => (1 << field::PATH) | (1 << field::MEMBER),
            METHOD_RETURN => 1 << field::REPLY_SERIAL,
            ERROR => (1 << field::ERROR_NAME) | (1 << field::REPLY_SERIAL),
            SIGNAL => (1 << field::PATH) | (1 << field::INTERFACE) | (1 << field::MEMBER),
            _ => 0,
        };
        if seen & need != need {
            return Err(hdr_err("required header field missing"));
        }
        if unix_fds as usize > fds_available {
            return Err(WireError::BadFds);
        }
        let body = data.get(body_start..).unwrap_or(&[]);
        match signature {
            None if !body.is_empty() => {
                return Err(WireError::BadBody("body present without SIGNATURE"))
            }
            None => {}
            Some(sp) => {
                let sig = data.get(sp.range()).unwrap_or(&[]);
                body::validate_body(endian, sig, body)?;
            }
        }
        Ok(Message {
            buffer,
            base: base as u32,
            len: len as u32,
            endian,
            msg_type,
            flags,
            serial,
            reply_serial,
            unix_fds,
            path,
            interface,
            member,
            error_name,
            destination,
            signature,
            body_start: body_start as u32,
            needs_rebuild,
        })
    }

    /// The whole message as received.
    pub fn data(&self) -> &[u8] {
        let base = self.base as usize;
        self.buffer
            .get(base..base + self.len as usize)
            .unwrap_or(&[])
    }

    /// The shared buffer the message lives in (see [`Message::buffer_range`]): what a relayed
    /// copy holds on to instead of copying the body.
    pub fn buffer(&self) -> &Rc<[u8]> {
        &self.buffer
    }

    /// Whether the message is a slice of a larger buffer (not alone in its own).
    pub fn is_slice(&self) -> bool {
        self.buffer.len() != self.len as usize
    }

    /// This message in a buffer of its own: a copy of its bytes when it is a slice of a
    /// larger receive buffer (to keep for long without pinning that buffer), else a clone.
    pub fn detached(&self) -> Message {
        let mut m = self.clone();
        if self.is_slice() {
            m.buffer = Rc::from(self.data());
            m.base = 0;
        }
        m
    }

    /// Where the message lies in [`Message::buffer`].
    pub fn buffer_range(&self) -> Range<u32> {
        self.base..self.base + self.len
    }

    fn span(&self, s: Option<Span>) -> Option<&str> {
        let s = s?;
        let b = self.data().get(s.range())?;
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
    /// DESTINATION field's bytes (a bus name, so ASCII): for lookups that need no `str`.
    pub fn destination_bytes(&self) -> Option<&[u8]> {
        let s = self.destination?;
        self.data().get(s.range())
    }
    /// SIGNATURE field ("" when absent).
    pub fn signature(&self) -> &str {
        self.span(self.signature).unwrap_or("")
    }
    /// Body range within `data()`.
    pub fn body_range(&self) -> Range<usize> {
        self.body_start as usize..self.len as usize
    }
    /// Body range within [`Message::buffer`].
    pub fn body_in_buffer(&self) -> Range<u32> {
        self.base + self.body_start..self.base + self.len
    }
    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        self.data().get(self.body_range()).unwrap_or(&[])
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
        let sig = self.signature().as_bytes();
        let body = self.body();
        let (mut sp, mut pos) = (0, 0);
        for _ in 0..n {
            (sp, pos) = body::skip_value(self.endian, sig, sp, body, pos, 0)?;
        }
        match *sig.get(sp)? {
            b's' => body::read_str(self.endian, body, pos).map(Arg::Str),
            b'o' => body::read_str(self.endian, body, pos).map(Arg::Path),
            _ => Some(Arg::Other),
        }
    }

    /// The header to relay this message with: SENDER set to `sender`, unknown fields
    /// (code >= 10) removed, and, when `container_instance` is given, field 10 set to it
    /// (for receivers that called Containers1.RequestHeader). Written in `self.endian`.
    // Inline: once per relayed message; the rebuild is out of line.
    #[inline]
    pub fn relay_header(&self, sender: &str, container_instance: Option<&str>) -> RelayHeader {
        if !self.needs_rebuild && container_instance.is_none() {
            if let Some((tail, unpadded)) = sender_tail(self.endian, sender) {
                let fields_len = self.body_start as usize - FIXED_HEADER_LEN + unpadded;
                if let (Ok(fields_len), Some(head)) =
                    (u32::try_from(fields_len), self.data().first_chunk::<12>())
                {
                    let mut fixed = [0u8; FIXED_HEADER_LEN];
                    fixed[..12].copy_from_slice(head);
                    fixed[12..].copy_from_slice(&self.endian.put_u32(fields_len));
                    return RelayHeader::Splice {
                        fixed,
                        middle: self.base + FIXED_HEADER_LEN as u32..self.base + self.body_start,
                        tail,
                    };
                }
            }
        }
        RelayHeader::Rebuilt(self.rebuild_header(sender, container_instance))
    }

    /// Header with known fields except SENDER copied verbatim (8-aligned structs keep their
    /// inner alignment), then the bus's own fields.
    #[inline(never)]
    fn rebuild_header(&self, sender: &str, container_instance: Option<&str>) -> Vec<u8> {
        let extra = sender.len() + container_instance.map_or(0, str::len) + 48;
        let mut out = Vec::with_capacity(self.body_start as usize + extra);
        let data = self.data();
        out.extend_from_slice(data.get(..FIXED_HEADER_LEN).unwrap_or(&[0; 16]));
        for (code, range) in Fields::new(self.endian, data) {
            if (1..=9).contains(&code) && code != field::SENDER {
                out.pad8();
                out.extend_from_slice(data.get(range).unwrap_or(&[]));
            }
        }
        let unpadded =
            put_bus_fields(&mut out, self.endian, sender, container_instance).unwrap_or(out.len());
        let fields_len = u32::try_from(unpadded - FIXED_HEADER_LEN).unwrap_or(u32::MAX);
        if let Some(w) = out.get_mut(12..16) {
            w.copy_from_slice(&self.endian.put_u32(fields_len));
        }
        out
    }
}

/// The SENDER field and padding that [`Message::relay_header`] splices in after a
/// message's own header fields, made once for a sender and byte order: it is the same for
/// every message the connection sends (the bus keeps one per connection).
#[derive(Debug, Clone)]
pub struct SenderTail {
    endian: Endian,
    /// The padded field, in an array rather than an `ArrayVec` (whose clone goes byte
    /// by byte).
    bytes: [u8; TAIL_CAP],
    len: usize,
    unpadded: usize,
}

impl SenderTail {
    /// The tail for `sender` in byte order `endian`; None when it does not fit (then
    /// `relay_header` rebuilds the header anyway).
    pub fn new(endian: Endian, sender: &str) -> Option<SenderTail> {
        let (tail, unpadded) = sender_tail(endian, sender)?;
        let mut bytes = [0u8; TAIL_CAP];
        bytes.get_mut(..tail.len())?.copy_from_slice(&tail);
        Some(SenderTail {
            endian,
            bytes,
            len: tail.len(),
            unpadded,
        })
    }
}

impl Message {
    /// `relay_header(sender, None)`, with `tail` made for `sender` beforehand
    /// ([`SenderTail::new`]): the same header, without writing the SENDER field again.
    // Inlined into the relay, which then writes the header straight into the queued
    // message instead of copying it from this call's result; the other cases are a call.
    #[inline(always)]
    pub fn relay_header_with(&self, tail: &SenderTail, sender: &str) -> RelayHeader {
        if !self.needs_rebuild && tail.endian == self.endian {
            let fields_len = self.body_start as usize - FIXED_HEADER_LEN + tail.unpadded;
            if let (Ok(fields_len), Some(head)) =
                (u32::try_from(fields_len), self.data().first_chunk::<12>())
            {
                let mut fixed = [0u8; FIXED_HEADER_LEN];
                fixed[..12].copy_from_slice(head);
                fixed[12..].copy_from_slice(&self.endian.put_u32(fields_len));
                return RelayHeader::Splice {
                    fixed,
                    middle: self.base + FIXED_HEADER_LEN as u32..self.base + self.body_start,
                    tail: {
                        let mut t = ArrayVec::from(tail.bytes);
                        t.truncate(tail.len);
                        t
                    },
                };
            }
        }
        self.relay_header_without(sender)
    }

    /// `relay_header(sender, None)`, out of line: the cases [`Message::relay_header_with`]
    /// cannot splice with its tail (a header to rebuild, the other byte order).
    #[inline(never)]
    fn relay_header_without(&self, sender: &str) -> RelayHeader {
        self.relay_header(sender, None)
    }
}

#[cfg(test)]
mod sender_tail_tests {
    use super::*;
    use crate::wire::marshal::{BodyWriter, MessageBuilder};

    /// Two calls to relay: a plain one, and one with a SENDER of its own (which relaying
    /// must drop, so its header is rebuilt).
    fn two_calls() -> [Vec<u8>; 2] {
        let mut body = BodyWriter::new();
        body.str("x");
        let plain = MessageBuilder::method_call("/a/b", Some("org.x.Y"), "Zed")
            .destination(":1.2")
            .build(7, &body);
        let with_sender = MessageBuilder::method_call("/a", None, "M")
            .destination(":1.2")
            .sender(":1.99")
            .build(8, &body);
        [plain, with_sender]
    }

    /// The bytes a relay header puts on the wire, for comparing headers made both ways.
    fn wire(m: &Message, h: &RelayHeader) -> Vec<u8> {
        match h {
            RelayHeader::Splice {
                fixed,
                middle,
                tail,
            } => {
                let mid = &m.buffer()[middle.start as usize..middle.end as usize];
                [&fixed[..], mid, &tail[..]].concat()
            }
            RelayHeader::Rebuilt(v) => v.clone(),
        }
    }

    /// `relay_header_with` with a tail made for the sender gives exactly `relay_header`'s
    /// header: spliced when it can, and for a message in the other byte order or with a
    /// SENDER of its own (which must be dropped) the rebuilt one.
    #[test]
    fn a_premade_tail_gives_the_same_header() {
        let [plain, with_sender] = two_calls();
        for sender in [":1.1", ":1.12345", ":1.1234567890123"] {
            let little = SenderTail::new(Endian::Little, sender).unwrap();
            let big = SenderTail::new(Endian::Big, sender).unwrap();
            for bytes in [&plain, &with_sender] {
                let m = Message::parse(Rc::from(&bytes[..]), 0).unwrap();
                let want = wire(&m, &m.relay_header(sender, None));
                for tail in [&little, &big] {
                    let got = m.relay_header_with(tail, sender);
                    assert_eq!(wire(&m, &got), want, "{sender} {:?}", tail.endian);
                }
                // The premade tail is used, not rebuilt, when it applies.
                let spliced = matches!(
                    m.relay_header_with(&little, sender),
                    RelayHeader::Splice { .. }
                );
                assert_eq!(spliced, !m.needs_rebuild, "{sender}");
            }
        }
        // A sender too long for the tail has none: relay_header rebuilds for it.
        assert!(SenderTail::new(Endian::Little, &":1.".repeat(20)).is_none());
    }

    /// A cloned relay header (one per copy of a broadcast) is the same header, spliced or
    /// rebuilt.
    #[test]
    fn a_cloned_header_is_the_same() {
        let [plain, with_sender] = two_calls();
        for bytes in [&plain, &with_sender] {
            let m = Message::parse(Rc::from(&bytes[..]), 0).unwrap();
            for sender in [":1.1", ":1.1234567890123"] {
                let h = m.relay_header(sender, None);
                let c = h.clone();
                assert_eq!(wire(&m, &c), wire(&m, &h), "{sender}");
                assert_eq!(
                    matches!(c, RelayHeader::Splice { .. }),
                    matches!(h, RelayHeader::Splice { .. })
                );
            }
        }
    }
}

/// The UNIX_FDS value declared in a complete message's header, found without validating
/// the rest, so the reader knows how many of the received fds belong to this message before
/// calling [`Message::parse`]. `None` if the header cannot be walked (parse will then
/// reject the message anyway).
pub fn declared_fds(data: &[u8]) -> Option<u32> {
    let fixed = data.get(..FIXED_HEADER_LEN)?;
    let endian = Endian::from_mark(fixed[0])?;
    let fields_len = endian.u32([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
    let hdr = data.get(..FIXED_HEADER_LEN.checked_add(fields_len)?)?;
    let mut pos = FIXED_HEADER_LEN;
    while pos < hdr.len() {
        pos = super::align(pos, 8);
        let code = *hdr.get(pos)?;
        let mut c = Cursor::new(endian, hdr, pos + 1);
        let sig = c.sig().ok()?;
        if code == field::UNIX_FDS && sig == b"u" {
            return c.aligned_u32().ok();
        }
        let (_, next) = super::body::skip_value(endian, sig, 0, hdr, c.pos, 0)?;
        pos = next;
    }
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::body::testw::W;

    const BOTH: [Endian; 2] = [Endian::Little, Endian::Big];

    /// Test-only message builder: header fields written in place at their real offsets.
    struct MB {
        e: Endian,
        ty: u8,
        flags: u8,
        serial: u32,
        hdr: W,
        body: Vec<u8>,
    }

    impl MB {
        fn new(e: Endian, ty: u8) -> MB {
            let mut hdr = W::new(e);
            hdr.buf.resize(16, 0);
            MB {
                e,
                ty,
                flags: 0,
                serial: 7,
                hdr,
                body: Vec::new(),
            }
        }
        fn field(mut self, code: u8, sig: &str, f: impl FnOnce(&mut W)) -> MB {
            self.hdr.pad(8).y(code).g(sig);
            f(&mut self.hdr);
            self
        }
        fn fstr(self, code: u8, t: &str, v: &str) -> MB {
            let v = v.to_owned();
            self.field(code, t, move |w| {
                w.s(&v);
            })
        }
        fn fu32(self, code: u8, v: u32) -> MB {
            self.field(code, "u", |w| {
                w.u32(v);
            })
        }
        fn path(self, v: &str) -> MB {
            self.fstr(field::PATH, "o", v)
        }
        fn iface(self, v: &str) -> MB {
            self.fstr(field::INTERFACE, "s", v)
        }
        fn member(self, v: &str) -> MB {
            self.fstr(field::MEMBER, "s", v)
        }
        fn dest(self, v: &str) -> MB {
            self.fstr(field::DESTINATION, "s", v)
        }
        fn body(self, sig: &str, f: impl FnOnce(&mut W)) -> MB {
            let mut m = self.field(field::SIGNATURE, "g", |w| {
                w.g(sig);
            });
            let mut w = W::new(m.e);
            f(&mut w);
            m.body = w.buf;
            m
        }
        fn build(self) -> Vec<u8> {
            let mut b = self.hdr.buf;
            let fl = (b.len() - 16) as u32;
            b.resize(align(b.len(), 8), 0);
            b.extend_from_slice(&self.body);
            let e = self.e;
            b[0] = e.mark();
            b[1] = self.ty;
            b[2] = self.flags;
            b[3] = 1;
            b[4..8].copy_from_slice(&e.put_u32(self.body.len() as u32));
            b[8..12].copy_from_slice(&e.put_u32(self.serial));
            b[12..16].copy_from_slice(&e.put_u32(fl));
            b
        }
        fn parse(self, n_fds: usize) -> Result<Message, WireError> {
            Message::parse(Rc::from(self.build()), n_fds)
        }
    }

    fn call(e: Endian) -> MB {
        MB::new(e, METHOD_CALL)
            .path("/org/example/Obj")
            .iface("org.example.Iface")
            .member("Frob")
            .dest("org.example.Service")
    }

    fn parse_vec(v: Vec<u8>, n_fds: usize) -> Result<Message, WireError> {
        Message::parse(Rc::from(v), n_fds)
    }

    fn is_bad_header(r: Result<Message, WireError>) -> bool {
        matches!(r, Err(WireError::BadHeader(_)))
    }

    #[test]
    fn builder_signature_field_is_well_formed() {
        let v = call(Endian::Little)
            .body("su", |w| {
                w.s("x").u32(1);
            })
            .build();
        let m = parse_vec(v, 0).unwrap();
        assert_eq!(m.signature(), "su");
    }

    #[test]
    fn frame_len_rules() {
        for e in BOTH {
            let v = call(e).build();
            let fixed: [u8; 16] = v[..16].try_into().unwrap();
            assert_eq!(frame_len(&fixed, usize::MAX), Ok(v.len()));
            assert_eq!(frame_len(&fixed, v.len()), Ok(v.len()));
            assert_eq!(frame_len(&fixed, v.len() - 1), Err(WireError::TooLarge));
            let mut f = fixed;
            f[0] = b'x';
            assert_eq!(frame_len(&f, usize::MAX), Err(WireError::BadEndian));
            let mut f = fixed;
            f[3] = 2;
            assert_eq!(frame_len(&f, usize::MAX), Err(WireError::BadVersion));
            // Body length word at the protocol cap.
            let mut f = fixed;
            f[4..8].copy_from_slice(&e.put_u32((MAX_MESSAGE_SIZE - 16) as u32));
            f[12..16].copy_from_slice(&e.put_u32(0));
            assert_eq!(frame_len(&f, usize::MAX), Ok(MAX_MESSAGE_SIZE));
            f[4..8].copy_from_slice(&e.put_u32((MAX_MESSAGE_SIZE - 15) as u32));
            assert_eq!(frame_len(&f, usize::MAX), Err(WireError::TooLarge));
            // Overflow-prone values.
            let mut f = fixed;
            f[4..8].copy_from_slice(&e.put_u32(u32::MAX));
            f[12..16].copy_from_slice(&e.put_u32(u32::MAX));
            assert_eq!(frame_len(&f, usize::MAX), Err(WireError::TooLarge));
            // Header field array over 64 MiB, even with an empty body.
            let mut f = fixed;
            f[4..8].copy_from_slice(&e.put_u32(0));
            f[12..16].copy_from_slice(&e.put_u32((1 << 26) + 1));
            assert_eq!(frame_len(&f, usize::MAX), Err(WireError::TooLarge));
            // Padding counts: 16 + 1 field byte rounds to 24.
            f[12..16].copy_from_slice(&e.put_u32(1));
            assert_eq!(frame_len(&f, usize::MAX), Ok(24));
        }
    }

    #[test]
    fn parse_method_call_both_orders() {
        for e in BOTH {
            let mut mb = call(e).fu32(field::UNIX_FDS, 1).body("sih", |w| {
                w.s("hello").u32(5).u32(0);
            });
            mb.flags = 0x87;
            let m = mb.parse(1).unwrap();
            assert_eq!(m.endian, e);
            assert_eq!(m.msg_type, METHOD_CALL);
            assert_eq!(m.flags, 0x87);
            assert!(m.no_reply_expected() && m.no_auto_start());
            assert_eq!(m.serial, 7);
            assert_eq!(m.path(), Some("/org/example/Obj"));
            assert_eq!(m.interface(), Some("org.example.Iface"));
            assert_eq!(m.member(), Some("Frob"));
            assert_eq!(m.destination(), Some("org.example.Service"));
            assert_eq!(m.error_name(), None);
            assert_eq!(m.reply_serial, None);
            assert_eq!(m.unix_fds, 1);
            assert_eq!(m.signature(), "sih");
            assert_eq!(m.body().len(), 20);
            assert_eq!(m.body_range().end, m.data().len());
            assert!(!m.needs_rebuild);
        }
    }

    #[test]
    fn fixed_header_rejections() {
        for e in BOTH {
            let good = call(e).build();
            assert!(parse_vec(good.clone(), 0).is_ok());
            let mut v = good.clone();
            v[0] = b'L';
            assert_eq!(parse_vec(v, 0).unwrap_err(), WireError::BadEndian);
            let mut v = good.clone();
            v[3] = 0;
            assert_eq!(parse_vec(v, 0).unwrap_err(), WireError::BadVersion);
            let mut v = good.clone();
            v[1] = 0;
            assert_eq!(parse_vec(v, 0).unwrap_err(), WireError::BadType);
            let mut v = good.clone();
            v[8..12].copy_from_slice(&[0; 4]);
            assert_eq!(parse_vec(v, 0).unwrap_err(), WireError::ZeroSerial);
            // Length disagreements.
            let mut v = good.clone();
            v.push(0);
            assert!(is_bad_header(parse_vec(v, 0)));
            let mut v = good.clone();
            v.pop();
            assert!(is_bad_header(parse_vec(v, 0)));
            assert!(is_bad_header(parse_vec(good[..10].to_vec(), 0)));
            assert!(is_bad_header(parse_vec(Vec::new(), 0)));
        }
    }

    #[test]
    fn required_fields_per_type() {
        for e in BOTH {
            // METHOD_CALL: PATH + MEMBER.
            assert!(MB::new(e, METHOD_CALL)
                .path("/a")
                .member("M")
                .parse(0)
                .is_ok());
            assert!(is_bad_header(MB::new(e, METHOD_CALL).path("/a").parse(0)));
            assert!(is_bad_header(MB::new(e, METHOD_CALL).member("M").parse(0)));
            // METHOD_RETURN: REPLY_SERIAL.
            assert!(MB::new(e, METHOD_RETURN)
                .fu32(field::REPLY_SERIAL, 3)
                .parse(0)
                .is_ok());
            assert!(is_bad_header(MB::new(e, METHOD_RETURN).parse(0)));
            // ERROR: ERROR_NAME + REPLY_SERIAL.
            let err = MB::new(e, ERROR)
                .fstr(field::ERROR_NAME, "s", "org.example.Error.Failed")
                .fu32(field::REPLY_SERIAL, 3)
                .parse(0)
                .unwrap();
            assert_eq!(err.error_name(), Some("org.example.Error.Failed"));
            assert_eq!(err.reply_serial, Some(3));
            assert!(is_bad_header(
                MB::new(e, ERROR).fu32(field::REPLY_SERIAL, 3).parse(0)
            ));
            assert!(is_bad_header(
                MB::new(e, ERROR)
                    .fstr(field::ERROR_NAME, "s", "a.b")
                    .parse(0)
            ));
            // SIGNAL: PATH + INTERFACE + MEMBER.
            assert!(MB::new(e, SIGNAL)
                .path("/a")
                .iface("a.b")
                .member("S")
                .parse(0)
                .is_ok());
            assert!(is_bad_header(
                MB::new(e, SIGNAL).path("/a").member("S").parse(0)
            ));
            // Unknown types need nothing, even with no fields at all.
            let m = MB::new(e, 5).parse(0).unwrap();
            assert_eq!(m.msg_type, 5);
            assert_eq!(m.body_range(), 16..16);
            assert!(MB::new(e, 255).dest(":1.2").parse(0).is_ok());
            // Meaningless known fields are ignored, not rejected.
            assert!(MB::new(e, SIGNAL)
                .path("/a")
                .iface("a.b")
                .member("S")
                .fu32(field::REPLY_SERIAL, 9)
                .parse(0)
                .is_ok());
        }
    }

    #[test]
    fn header_field_rejections() {
        for e in BOTH {
            // Wrong types for known fields.
            assert!(is_bad_header(
                MB::new(e, METHOD_CALL)
                    .fstr(field::PATH, "s", "/a")
                    .member("M")
                    .parse(0)
            ));
            assert!(is_bad_header(
                call(e).fstr(field::SENDER, "o", "/a").parse(0)
            ));
            assert!(is_bad_header(
                call(e).fstr(field::UNIX_FDS, "s", "x").parse(0)
            ));
            assert!(is_bad_header(
                MB::new(e, METHOD_RETURN)
                    .fstr(field::REPLY_SERIAL, "s", "x")
                    .parse(0)
            ));
            assert!(is_bad_header(
                call(e)
                    .field(field::REPLY_SERIAL, "i", |w| {
                        w.u32(1);
                    })
                    .parse(0)
            ));
            assert!(is_bad_header(
                call(e)
                    .field(field::SIGNATURE, "s", |w| {
                        w.s("");
                    })
                    .parse(0)
            ));
            // Duplicates.
            assert!(is_bad_header(call(e).member("Other").parse(0)));
            assert!(is_bad_header(call(e).dest("org.example.Service").parse(0)));
            // Code 0.
            assert!(is_bad_header(call(e).fu32(0, 1).parse(0)));
            // Invalid names.
            assert!(is_bad_header(
                MB::new(e, METHOD_CALL).path("/a/").member("M").parse(0)
            ));
            assert!(is_bad_header(
                call(e).fstr(field::SENDER, "s", "not a name").parse(0)
            ));
            assert!(is_bad_header(
                MB::new(e, METHOD_CALL).path("/a").member("1M").parse(0)
            ));
            assert!(is_bad_header(
                MB::new(e, METHOD_CALL)
                    .path("/a")
                    .member("M")
                    .iface("noperiod")
                    .parse(0)
            ));
            assert!(is_bad_header(
                MB::new(e, METHOD_CALL)
                    .path("/a")
                    .member("M")
                    .dest("org..x")
                    .parse(0)
            ));
            assert!(is_bad_header(
                MB::new(e, ERROR)
                    .fstr(field::ERROR_NAME, "s", "org.Bad-Name")
                    .fu32(field::REPLY_SERIAL, 1)
                    .parse(0)
            ));
            // Non-UTF-8 name.
            assert!(is_bad_header(
                MB::new(e, METHOD_CALL)
                    .path("/a")
                    .field(field::MEMBER, "s", |w| {
                        w.sb(b"M\xff");
                    })
                    .parse(0)
            ));
            // REPLY_SERIAL 0.
            assert!(is_bad_header(
                MB::new(e, METHOD_RETURN)
                    .fu32(field::REPLY_SERIAL, 0)
                    .parse(0)
            ));
            // Reserved local path / interface.
            assert!(is_bad_header(
                MB::new(e, METHOD_CALL)
                    .path(LOCAL_PATH)
                    .member("M")
                    .parse(0)
            ));
            assert!(is_bad_header(
                MB::new(e, SIGNAL)
                    .path("/a")
                    .iface(LOCAL_INTERFACE)
                    .member("M")
                    .parse(0)
            ));
            // Invalid SIGNATURE value.
            assert_eq!(
                call(e).body("a", |_| {}).parse(0).unwrap_err(),
                WireError::BadSignature
            );
        }
    }

    #[test]
    fn header_padding_rules() {
        for e in BOTH {
            // PATH "/a" occupies 16..27; bytes 27..32 pad to the next field.
            let v = MB::new(e, METHOD_CALL).path("/a").member("M").build();
            assert!(parse_vec(v.clone(), 0).is_ok());
            let mut bad = v.clone();
            bad[28] = 1;
            assert!(is_bad_header(parse_vec(bad, 0)));
            // Padding between the 4-byte string length and the variant signature.
            let mut bad = v.clone();
            assert_eq!(bad[19], 0); // NUL of the signature "o"
            bad[19] = 1;
            assert!(is_bad_header(parse_vec(bad, 0)));
            // Padding after the last field, before the body.
            let fields_end = 16 + e.u32(v[12..16].try_into().unwrap()) as usize;
            assert!(fields_end % 8 != 0);
            let mut bad = v.clone();
            bad[fields_end] = 1;
            assert!(is_bad_header(parse_vec(bad, 0)));
            // Array length that ends inside the inter-field padding.
            let mut bad = v.clone();
            bad[12..16].copy_from_slice(&e.put_u32(13));
            assert!(parse_vec(bad, 0).is_err());
            // Array length that cuts a field short (reads may not run into padding).
            let mut bad = v.clone();
            bad[12..16].copy_from_slice(&e.put_u32(10));
            assert!(is_bad_header(parse_vec(bad, 0)));
        }
    }

    #[test]
    fn unknown_fields_and_sender() {
        for e in BOTH {
            let m = call(e).parse(0).unwrap();
            assert!(!m.needs_rebuild);
            // Code 10 (old CONTAINER_INSTANCE) is treated as unknown.
            let m = call(e).fstr(10, "o", "/x").parse(0).unwrap();
            assert!(m.needs_rebuild);
            // A complex unknown value, in the middle of the known fields.
            let m = MB::new(e, METHOD_CALL)
                .path("/a")
                .field(200, "a{sv}", |w| {
                    w.array(8, |w| {
                        w.s("k").g("t").pad(8).u64(1);
                    });
                })
                .member("M")
                .parse(0)
                .unwrap();
            assert!(m.needs_rebuild);
            assert_eq!(m.member(), Some("M"));
            // Duplicate unknown fields are fine.
            assert!(call(e).fu32(50, 1).fu32(50, 2).parse(0).is_ok());
            // Unknown fields must still be well formed.
            assert!(is_bad_header(
                call(e)
                    .field(11, "s", |w| {
                        w.sb(b"\xC0\x80");
                    })
                    .parse(0)
            ));
            assert!(is_bad_header(
                call(e)
                    .field(11, "b", |w| {
                        w.u32(2);
                    })
                    .parse(0)
            ));
            assert!(is_bad_header(
                call(e)
                    .field(11, "ii", |w| {
                        w.u32(1).u32(2);
                    })
                    .parse(0)
            ));
            assert!(is_bad_header(call(e).field(11, "", |_| {}).parse(0)));
            // Client SENDER is accepted but forces a rebuild.
            let m = call(e).fstr(field::SENDER, "s", ":1.99").parse(0).unwrap();
            assert!(m.needs_rebuild);
        }
    }

    #[test]
    fn unix_fds_must_match() {
        for e in BOTH {
            assert!(call(e).fu32(field::UNIX_FDS, 2).parse(2).is_ok());
            assert_eq!(
                call(e).fu32(field::UNIX_FDS, 2).parse(1).unwrap_err(),
                WireError::BadFds
            );
            assert_eq!(call(e).parse(1).unwrap_err(), WireError::BadFds);
            assert_eq!(
                call(e).fu32(field::UNIX_FDS, 1).parse(0).unwrap_err(),
                WireError::BadFds
            );
            // An 'h' index is not checked against UNIX_FDS (dbus-daemon delivers it; the
            // receiver refuses it), in the body or in an unknown header field.
            for (index, fds) in [(1, 2), (2, 2), (0, 0), (u32::MAX, 0)] {
                let mut m = call(e);
                if fds > 0 {
                    m = m.fu32(field::UNIX_FDS, fds);
                }
                let m = m
                    .field(11, "h", |w| {
                        w.u32(index);
                    })
                    .body("h", |w| {
                        w.u32(index);
                    })
                    .parse(fds as usize)
                    .unwrap();
                assert_eq!(m.body().len(), 4);
            }
        }
    }

    #[test]
    fn body_against_signature() {
        for e in BOTH {
            // No SIGNATURE means an empty body.
            let mut mb = call(e);
            mb.body = vec![0; 8];
            assert!(matches!(mb.parse(0), Err(WireError::BadBody(_))));
            // Empty signature with empty body is fine.
            assert!(call(e).body("", |_| {}).parse(0).is_ok());
            // Missing and trailing bytes.
            assert!(matches!(
                call(e)
                    .body("uu", |w| {
                        w.u32(1);
                    })
                    .parse(0),
                Err(WireError::BadBody(_))
            ));
            assert!(matches!(
                call(e)
                    .body("u", |w| {
                        w.u32(1).u32(2);
                    })
                    .parse(0),
                Err(WireError::BadBody(_))
            ));
            assert!(matches!(
                call(e)
                    .body("b", |w| {
                        w.u32(2);
                    })
                    .parse(0),
                Err(WireError::BadBody(_))
            ));
            assert!(matches!(
                call(e)
                    .body("s", |w| {
                        w.sb(b"\xED\xA0\x80");
                    })
                    .parse(0),
                Err(WireError::BadBody(_))
            ));
        }
    }

    #[test]
    fn args() {
        for e in BOTH {
            let m = call(e)
                .body("soa{sv}v(ss)su", |w| {
                    w.s("zero").s("/one").array(8, |w| {
                        w.s("k").g("as").array(4, |w| {
                            w.s("deep");
                        });
                    });
                    w.g("s").s("three");
                    w.pad(8).s("x").s("y");
                    w.s("five").u32(6);
                })
                .parse(0)
                .unwrap();
            assert_eq!(m.arg(0), Some(Arg::Str("zero")));
            assert_eq!(m.arg(1), Some(Arg::Path("/one")));
            assert_eq!(m.arg(2), Some(Arg::Other));
            assert_eq!(m.arg(3), Some(Arg::Other));
            assert_eq!(m.arg(4), Some(Arg::Other));
            assert_eq!(m.arg(5), Some(Arg::Str("five")));
            assert_eq!(m.arg(6), Some(Arg::Other));
            assert_eq!(m.arg(7), None);
            assert_eq!(m.arg(63), None);
            let empty = call(e).parse(0).unwrap();
            assert_eq!(empty.arg(0), None);
        }
    }

    /// Header bytes (fixed + fields + padding) for a relay, then the original body.
    fn assemble(m: &Message, rh: &RelayHeader) -> Vec<u8> {
        let mut v = Vec::new();
        match rh {
            RelayHeader::Splice {
                fixed,
                middle,
                tail,
            } => {
                v.extend_from_slice(fixed);
                v.extend_from_slice(&m.data()[middle.start as usize..middle.end as usize]);
                v.extend_from_slice(tail);
            }
            RelayHeader::Rebuilt(h) => v.extend_from_slice(h),
        }
        assert_eq!(v.len() % 8, 0, "header not padded to 8");
        v.extend_from_slice(m.body());
        v
    }

    /// All (code, STRING value) header fields, plus the list of codes.
    fn field_codes(m: &Message) -> Vec<u8> {
        Fields::new(m.endian, m.data()).map(|(c, _)| c).collect()
    }

    fn string_field(m: &Message, code: u8) -> Option<String> {
        Fields::new(m.endian, m.data())
            .find(|(c, _)| *c == code)
            .and_then(|(_, r)| {
                // struct: code, sig len, type, NUL, then the 4-aligned string
                body::read_str(m.endian, m.data(), r.start + 4).map(str::to_owned)
            })
    }

    fn assert_same_except_header(a: &Message, b: &Message) {
        assert_eq!(a.endian, b.endian);
        assert_eq!(a.msg_type, b.msg_type);
        assert_eq!(a.flags, b.flags);
        assert_eq!(a.serial, b.serial);
        assert_eq!(a.reply_serial, b.reply_serial);
        assert_eq!(a.unix_fds, b.unix_fds);
        assert_eq!(a.path(), b.path());
        assert_eq!(a.interface(), b.interface());
        assert_eq!(a.member(), b.member());
        assert_eq!(a.error_name(), b.error_name());
        assert_eq!(a.destination(), b.destination());
        assert_eq!(a.signature(), b.signature());
        assert_eq!(a.body(), b.body());
    }

    #[test]
    fn relay_splice() {
        for e in BOTH {
            for body in [false, true] {
                for ci in [None, Some("/org/freedesktop/DBus/Containers1/c1")] {
                    let mut mb = call(e).fu32(field::UNIX_FDS, 1);
                    mb.flags = 0x85;
                    if body {
                        mb = mb.body("sv", |w| {
                            w.s("abc").g("t").pad(8).u64(42);
                        });
                    }
                    let m = mb.parse(1).unwrap();
                    let rh = m.relay_header(":1.42", ci);
                    // A Containers1 instance field does not fit the inline tail.
                    match (&rh, ci) {
                        (RelayHeader::Splice { fixed, middle, .. }, None) => {
                            assert_eq!(fixed[..12], m.data()[..12]);
                            assert_eq!(middle.clone(), 16..m.body_start);
                        }
                        (RelayHeader::Rebuilt(_), Some(_)) => {}
                        _ => panic!("unexpected relay header {rh:?} for {ci:?}"),
                    }
                    let out = assemble(&m, &rh);
                    assert_eq!(out[0], e.mark());
                    let r = parse_vec(out, 1).unwrap();
                    assert_same_except_header(&m, &r);
                    assert_eq!(string_field(&r, field::SENDER).as_deref(), Some(":1.42"));
                    assert_eq!(string_field(&r, field::CONTAINER_INSTANCE).as_deref(), ci);
                    let mut expect = field_codes(&m);
                    expect.push(field::SENDER);
                    if ci.is_some() {
                        expect.push(field::CONTAINER_INSTANCE);
                    }
                    assert_eq!(field_codes(&r), expect);
                }
            }
        }
    }

    #[test]
    fn relay_splice_fits_every_unique_name() {
        let m = call(Endian::Little).parse(0).unwrap();
        let longest = format!(":1.{}", u64::MAX);
        for sender in [":1.1", longest.as_str(), "org.freedesktop.DBus"] {
            let rh = m.relay_header(sender, None);
            assert!(matches!(rh, RelayHeader::Splice { .. }), "{sender}");
            let r = parse_vec(assemble(&m, &rh), 0).unwrap();
            assert_eq!(string_field(&r, field::SENDER).as_deref(), Some(sender));
        }
    }

    #[test]
    fn relay_splice_without_fields() {
        for e in BOTH {
            let m = MB::new(e, 6).parse(0).unwrap();
            let rh = m.relay_header(":1.1", None);
            assert!(matches!(rh, RelayHeader::Splice { ref middle, .. } if middle.is_empty()));
            let r = parse_vec(assemble(&m, &rh), 0).unwrap();
            assert_eq!(field_codes(&r), [7]);
            assert_eq!(string_field(&r, field::SENDER).as_deref(), Some(":1.1"));
        }
    }

    #[test]
    fn relay_rebuilt_strips_sender_and_unknown() {
        for e in BOTH {
            let m = MB::new(e, SIGNAL)
                .fstr(field::SENDER, "s", ":1.666")
                .path("/a/b")
                .field(200, "a{sv}", |w| {
                    w.array(8, |w| {
                        w.s("k").g("y").y(1);
                    });
                })
                .iface("org.example.I")
                .fstr(10, "o", "/spoofed")
                .member("Sig")
                .fu32(field::REPLY_SERIAL, 77)
                .body("ays", |w| {
                    w.array(1, |w| {
                        w.y(1).y(2).y(3);
                    });
                    w.s("tail");
                })
                .parse(0)
                .unwrap();
            assert!(m.needs_rebuild);
            for ci in [None, Some("/c/1")] {
                let rh = m.relay_header(":1.5", ci);
                assert!(matches!(rh, RelayHeader::Rebuilt(_)));
                let out = assemble(&m, &rh);
                assert_eq!(out[0], e.mark());
                let r = parse_vec(out, 0).unwrap();
                assert_same_except_header(&m, &r);
                assert_eq!(string_field(&r, field::SENDER).as_deref(), Some(":1.5"));
                assert_eq!(string_field(&r, field::CONTAINER_INSTANCE).as_deref(), ci);
                let codes = field_codes(&r);
                assert!(!codes.contains(&200));
                assert_eq!(codes.iter().filter(|&&c| c == 7).count(), 1);
                assert_eq!(codes.contains(&10), ci.is_some());
                assert_eq!(r.arg(1), Some(Arg::Str("tail")));
            }
        }
    }

    #[test]
    fn relay_falls_back_when_tail_too_big() {
        for e in BOTH {
            let m = call(e).body("u", |w| {
                w.u32(9);
            });
            let m = m.parse(0).unwrap();
            let long = format!("/{}", "x".repeat(TAIL_CAP + 60));
            let rh = m.relay_header(":1.3", Some(&long));
            assert!(matches!(rh, RelayHeader::Rebuilt(_)));
            let r = parse_vec(assemble(&m, &rh), 0).unwrap();
            assert_same_except_header(&m, &r);
            assert_eq!(string_field(&r, 10).as_deref(), Some(long.as_str()));
            // A Containers1 instance field always takes the Rebuilt path.
            let rh = m.relay_header(":1.3", Some("/c"));
            assert!(matches!(rh, RelayHeader::Rebuilt(_)));
            // A SENDER exactly at the boundary still splices (8 + len + NUL), one byte more
            // does not.
            let fits = format!(":1.{}", "7".repeat(TAIL_CAP - 8 - 1 - 3));
            let rh = m.relay_header(&fits, None);
            let RelayHeader::Splice { ref tail, .. } = rh else {
                panic!("expected splice");
            };
            assert_eq!(tail.len(), TAIL_CAP);
            let r = parse_vec(assemble(&m, &rh), 0).unwrap();
            assert_eq!(
                string_field(&r, field::SENDER).as_deref(),
                Some(fits.as_str())
            );
            let over = format!("{fits}7");
            let rh = m.relay_header(&over, None);
            assert!(matches!(rh, RelayHeader::Rebuilt(_)));
            let r = parse_vec(assemble(&m, &rh), 0).unwrap();
            assert_eq!(
                string_field(&r, field::SENDER).as_deref(),
                Some(over.as_str())
            );
        }
    }

    #[test]
    fn relay_keeps_big_endian() {
        let m = call(Endian::Big)
            .body("u", |w| {
                w.u32(0x01020304);
            })
            .parse(0)
            .unwrap();
        let out = assemble(&m, &m.relay_header(":1.9", None));
        assert_eq!(out[0], b'B');
        let r = parse_vec(out.clone(), 0).unwrap();
        assert_eq!(r.endian, Endian::Big);
        assert_eq!(&out[out.len() - 4..], &[1, 2, 3, 4]);
        assert_eq!(string_field(&r, field::SENDER).as_deref(), Some(":1.9"));
    }

    /// Header samples covering every kind of field: each known code, unknown fields with
    /// simple and nested values, SENDER, an empty SIGNATURE, a root path.
    fn header_samples(e: Endian) -> Vec<Vec<u8>> {
        vec![
            call(e)
                .fu32(field::UNIX_FDS, 1)
                .body("a{sv}hb(yo)g", |w| {
                    w.array(8, |w| {
                        w.s("k").g("ai").array(4, |w| {
                            w.u32(1);
                        });
                    });
                    w.u32(0).u32(1).pad(8).y(1).s("/p").g("v");
                })
                .build(),
            MB::new(e, ERROR)
                .fstr(field::SENDER, "s", ":1.1")
                .fstr(field::ERROR_NAME, "s", "a.b")
                .fu32(field::REPLY_SERIAL, 1)
                .field(33, "v", |w| {
                    w.g("s").s("x");
                })
                .body("sv", |w| {
                    w.s("msg").g("as").array(4, |w| {
                        w.s("q");
                    });
                })
                .build(),
            MB::new(e, SIGNAL)
                .path("/")
                .iface("a.b")
                .member("M")
                .dest(":1.5")
                .fu32(field::REPLY_SERIAL, 9)
                .body("", |_| {})
                .build(),
            MB::new(e, METHOD_RETURN)
                .fu32(field::REPLY_SERIAL, 2)
                .dest("org.x-y")
                .field(12, "(ay)", |w| {
                    w.pad(8).array(1, |w| {
                        w.y(3);
                    });
                })
                .body("ay", |w| {
                    w.array(1, |_| {});
                })
                .build(),
        ]
    }

    /// The one-word walk accepts exactly what the reference walk accepts, with the same
    /// fields, under every single-byte corruption of the header (fixed part included, so
    /// the array length varies too) and every array length up to past the header.
    #[test]
    fn walk_agrees_with_reference() {
        fn check(e: Endian, v: &[u8]) -> bool {
            let fields_end = 16 + e.u32(v[12..16].try_into().unwrap()) as usize;
            let Some(hdr) = v.get(..align(fields_end, 8)) else {
                return false;
            };
            let mut f = HeaderFields::default();
            let fast = f.walk(e, hdr, fields_end).map(|()| {
                // Where REPLY_SERIAL's value is (for the cache), which the reference does
                // not record.
                let at = f.reply_serial_at as usize;
                let value = (at != 0).then(|| e.u32(v[at..at + 4].try_into().unwrap()));
                assert_eq!(value, f.reply_serial);
                HeaderFields {
                    reply_serial_at: 0,
                    ..f
                }
            });
            let slow = reference::walk(e, v, fields_end);
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b),
                    "{a} / {b}"
                ),
                _ => panic!("fast {fast:?}, reference {slow:?} for {v:?}"),
            }
            fast.is_ok()
        }
        let (mut accepted, mut rejected) = (0, 0);
        for e in BOTH {
            for good in header_samples(e) {
                assert!(check(e, &good));
                let fields_end = 16 + e.u32(good[12..16].try_into().unwrap()) as usize;
                for i in 0..align(fields_end, 8) {
                    for delta in [1u8, 2, 0x7F, 0x80, 0xFF] {
                        let mut v = good.clone();
                        v[i] = v[i].wrapping_add(delta);
                        if check(e, &v) {
                            accepted += 1;
                        } else {
                            rejected += 1;
                        }
                    }
                }
                for len in 0..fields_end as u32 {
                    let mut v = good.clone();
                    v[12..16].copy_from_slice(&e.put_u32(len));
                    let _ = check(e, &v);
                }
            }
        }
        // Both kinds occur (a name's letters may change; a code or length may not).
        assert!(accepted > 100 && rejected > 1000, "{accepted} {rejected}");
    }

    /// `v` parsed with `cache` (checking it agrees with a parse without one), and whether
    /// the cache held its header fields.
    fn parse_cached(v: &[u8], cache: &mut HeaderCache) -> (Result<Message, WireError>, bool) {
        let e = Endian::from_mark(v[0]).unwrap_or(Endian::Little);
        let fields_end = 16 + e.u32(v[12..16].try_into().unwrap()) as usize;
        let hit = v
            .get(..align(fields_end, 8))
            .is_some_and(|hdr| cache.lookup(e, hdr));
        let rc: Rc<[u8]> = Rc::from(v);
        let plain = Message::parse_framed(Rc::clone(&rc), 0..v.len(), 1);
        let cached = Message::parse_framed_cached(rc, 0..v.len(), 1, cache);
        match (&plain, &cached) {
            (Ok(a), Ok(b)) => {
                assert_same_except_header(a, b);
                assert_eq!(a.needs_rebuild, b.needs_rebuild);
                assert_eq!(a.body_start, b.body_start);
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("cache changed the verdict: {plain:?} / {cached:?}"),
        }
        (cached, hit)
    }

    /// The header cache holds a header only while the next one repeats its fields exactly:
    /// any change from the fields length on (REPLY_SERIAL's value aside) misses, and every
    /// verdict and field is as without the cache.
    #[test]
    fn header_cache_hits_only_identical_fields() {
        for e in BOTH {
            for good in header_samples(e) {
                let mut cache = HeaderCache::default();
                assert!(!parse_cached(&good, &mut cache).1);
                let (m, hit) = parse_cached(&good, &mut cache);
                assert!(hit && m.is_ok());
                let m = m.unwrap();
                let body_start = m.body_start as usize;
                let rs_at = (Fields::new(e, &good))
                    .find(|(c, _)| *c == field::REPLY_SERIAL)
                    .map(|(_, r)| r.start + 4);
                for i in 0..body_start {
                    for delta in [1u8, 0x80] {
                        let mut v = good.clone();
                        v[i] = v[i].wrapping_add(delta);
                        let mut cache = HeaderCache::default();
                        let _ = parse_cached(&good, &mut cache);
                        let (r, hit) = parse_cached(&v, &mut cache);
                        let in_rs = rs_at.is_some_and(|at| (at..at + 4).contains(&i));
                        if i >= 12 && !in_rs {
                            assert!(!hit, "hit at {i}");
                        } else if in_rs {
                            // Another REPLY_SERIAL: a hit unless it is 0.
                            assert_eq!(hit, r.is_ok(), "{i}");
                        }
                        // The good message again: a hit only if the variant was valid
                        // and had the same fields.
                        let (again, _) = parse_cached(&good, &mut cache);
                        assert!(again.is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn header_cache_reply_serial_and_limits() {
        for e in BOTH {
            let reply = |rs| {
                MB::new(e, METHOD_RETURN)
                    .dest(":1.7")
                    .fu32(field::REPLY_SERIAL, rs)
                    .body("s", |w| {
                        w.s("x");
                    })
                    .build()
            };
            let mut cache = HeaderCache::default();
            assert!(!parse_cached(&reply(5), &mut cache).1);
            for rs in [6, u32::MAX, 1] {
                let (m, hit) = parse_cached(&reply(rs), &mut cache);
                assert!(hit);
                assert_eq!(m.unwrap().reply_serial, Some(rs));
            }
            let (m, hit) = parse_cached(&reply(0), &mut cache);
            assert!(!hit && is_bad_header(m));
            assert!(parse_cached(&reply(2), &mut cache).1);
            // The same bytes read in the other byte order are another header.
            let v = reply(3);
            let other = if e == Endian::Little {
                Endian::Big
            } else {
                Endian::Little
            };
            let body_start = parse_vec(v.clone(), 0).unwrap().body_start as usize;
            assert!(cache.lookup(e, &v[..body_start]));
            assert!(!cache.lookup(other, &v[..body_start]));
            // A header over the cap is validated every time, never kept.
            let long = format!("/{}", "p".repeat(HEADER_CACHE_CAP));
            let big = MB::new(e, METHOD_CALL).path(&long).member("M").build();
            for _ in 0..2 {
                let (m, hit) = parse_cached(&big, &mut cache);
                assert!(m.is_ok() && !hit);
            }
            let mut bad = big.clone();
            bad[30] = b'-';
            assert!(is_bad_header(parse_cached(&bad, &mut cache).0));
        }
    }

    /// The header walk before the one-word fast path (with the final padding check that
    /// parse_framed then made), kept as the reference the fast walk must agree with.
    mod reference {
        use super::super::*;

        fn str_field<'a>(c: &mut Cursor<'a>) -> Result<(&'a [u8], Option<Span>), WireError> {
            let b = c.string().map_err(hdr_err)?;
            let start = c.pos - 1 - b.len();
            Ok((b, Span::at(start, b.len() as u32)))
        }

        /// Walk `data[..fields_end]`, then check the padding up to the body.
        pub(super) fn walk(
            endian: Endian,
            data: &[u8],
            fields_end: usize,
        ) -> Result<HeaderFields, WireError> {
            let mut f = HeaderFields::default();
            let hdr = data.get(..fields_end).ok_or(hdr_err("truncated"))?;
            ref_walk(&mut f, endian, hdr)?;
            let pad = data
                .get(fields_end..align(fields_end, 8))
                .ok_or(hdr_err("truncated"))?;
            if pad.iter().any(|&b| b != 0) {
                return Err(hdr_err("non-zero padding after header fields"));
            }
            Ok(f)
        }

        fn ref_walk(this: &mut HeaderFields, endian: Endian, hdr: &[u8]) -> Result<(), WireError> {
            let fields_end = hdr.len();
            // Reads are bounded by `hdr`, so no field can run into the padding or the body.
            let mut c = Cursor::new(endian, hdr, FIXED_HEADER_LEN);
            while c.pos < fields_end {
                // Each (yv) struct starts 8-aligned; an array may not end in padding.
                c.pad(8).map_err(hdr_err)?;
                if c.pos >= fields_end {
                    return Err(hdr_err("field array ends inside padding"));
                }
                // Known fields have a one-type signature: code, length 1, type, NUL in one read
                // (the same checks as u8() then sig(), which handle everything else).
                let (code, vsig) = match hdr.get(c.pos..c.pos + 4) {
                    Some(w @ &[code, 1, _, 0]) => {
                        c.pos += 4;
                        (code, &w[2..3])
                    }
                    _ => {
                        let code = c.u8().map_err(hdr_err)?;
                        (code, c.sig().map_err(hdr_err)?)
                    }
                };
                if code == 0 {
                    return Err(hdr_err("field code 0"));
                }
                let Some(&want) = FIELD_TYPES.get(code as usize) else {
                    // Unknown field (>= 10): any well-formed value; dropped when relaying.
                    if !is_single_complete_type(vsig) {
                        return Err(hdr_err("bad variant signature in unknown field"));
                    }
                    // Inside the header's array, struct and variant: three levels deep.
                    c.pos = body::validate_values(endian, vsig, hdr, c.pos, 3).map_err(hdr_err)?;
                    this.needs_rebuild = true;
                    continue;
                };
                let bit = 1u16 << code;
                if this.seen & bit != 0 {
                    return Err(hdr_err("duplicate header field"));
                }
                this.seen |= bit;
                if vsig != [want] {
                    return Err(hdr_err("header field has the wrong type"));
                }
                // Every STRING/OBJECT_PATH field is read here, at one call site.
                let (s, span) = if want == b's' || want == b'o' {
                    str_field(&mut c)?
                } else {
                    (&[][..], None)
                };
                match code {
                    field::PATH => {
                        if !names::object_path_bytes(s) {
                            return Err(hdr_err("invalid PATH"));
                        }
                        if s == LOCAL_PATH.as_bytes() {
                            return Err(hdr_err("reserved local PATH"));
                        }
                        this.path = span;
                    }
                    field::INTERFACE => {
                        if !names::interface_bytes(s) {
                            return Err(hdr_err("invalid INTERFACE"));
                        }
                        if s == LOCAL_INTERFACE.as_bytes() {
                            return Err(hdr_err("reserved local INTERFACE"));
                        }
                        this.interface = span;
                    }
                    field::MEMBER => {
                        if !names::member_bytes(s) {
                            return Err(hdr_err("invalid MEMBER"));
                        }
                        this.member = span;
                    }
                    field::ERROR_NAME => {
                        if !names::interface_bytes(s) {
                            return Err(hdr_err("invalid ERROR_NAME"));
                        }
                        this.error_name = span;
                    }
                    field::DESTINATION => {
                        if !names::bus_name_bytes(s) {
                            return Err(hdr_err("invalid DESTINATION"));
                        }
                        this.destination = span;
                    }
                    field::SENDER => {
                        if !names::bus_name_bytes(s) {
                            return Err(hdr_err("invalid SENDER"));
                        }
                        // Replaced when relaying; the old one must go.
                        this.needs_rebuild = true;
                    }
                    field::REPLY_SERIAL => {
                        let v = c.aligned_u32().map_err(hdr_err)?;
                        if v == 0 {
                            return Err(hdr_err("REPLY_SERIAL 0"));
                        }
                        this.reply_serial = Some(v);
                    }
                    field::SIGNATURE => {
                        let b = c.sig().map_err(hdr_err)?;
                        if !is_valid_signature(b) {
                            return Err(WireError::BadSignature);
                        }
                        this.signature = Span::at(c.pos - 1 - b.len(), b.len() as u32);
                    }
                    _ => {
                        // UNIX_FDS, the only code left in 1..=9.
                        this.unix_fds = c.aligned_u32().map_err(hdr_err)?;
                    }
                }
            }

            Ok(())
        }
    }

    /// Every single-byte corruption and truncation of some valid messages: never a panic,
    /// and whatever is still accepted relays into something that parses again.
    #[test]
    fn mutations_never_panic() {
        for e in BOTH {
            let samples = [
                call(e)
                    .fu32(field::UNIX_FDS, 1)
                    .body("a{sv}hb(yo)g", |w| {
                        w.array(8, |w| {
                            w.s("k").g("ai").array(4, |w| {
                                w.u32(1);
                            });
                        });
                        w.u32(0).u32(1).pad(8).y(1).s("/p").g("v");
                    })
                    .build(),
                MB::new(e, ERROR)
                    .fstr(field::SENDER, "s", ":1.1")
                    .fstr(field::ERROR_NAME, "s", "a.b")
                    .fu32(field::REPLY_SERIAL, 1)
                    .field(33, "v", |w| {
                        w.g("s").s("x");
                    })
                    .body("sv", |w| {
                        w.s("msg").g("as").array(4, |w| {
                            w.s("q");
                        });
                    })
                    .build(),
            ];
            let mut accepted = 0;
            for good in samples {
                for i in 0..good.len() {
                    for delta in [1u8, 0x80, 0xFF] {
                        let mut v = good.clone();
                        v[i] = v[i].wrapping_add(delta);
                        for n_fds in [0, 1] {
                            if let Ok(m) = parse_vec(v.clone(), n_fds) {
                                accepted += 1;
                                for n in 0..8 {
                                    let _ = m.arg(n);
                                }
                                let out = assemble(&m, &m.relay_header(":1.7", Some("/c")));
                                let r = parse_vec(out, n_fds).unwrap();
                                assert_same_except_header(&m, &r);
                            }
                        }
                    }
                }
                for cut in 0..good.len() {
                    let _ = parse_vec(good[..cut].to_vec(), 1);
                }
            }
            // Some corruptions (e.g. in string contents or flags) are legitimately accepted.
            assert!(accepted > 0);
        }
    }
}
