//! The few pieces of the D-Bus wire format the benchmark needs, written from the specification.
//!
//! Deliberately independent of the sluicebus crate so the tool measures every bus with the same
//! client code. Outgoing messages are always little-endian; incoming ones may be either
//! endianness. Only the header is parsed (the body is handed back as bytes), and header-field
//! values of any basic type can be skipped; container-typed header fields are rejected, as the
//! specification defines none.

use std::fmt;

/// `METHOD_CALL` message type.
pub const METHOD_CALL: u8 = 1;
/// `METHOD_RETURN` message type.
pub const METHOD_RETURN: u8 = 2;
/// `ERROR` message type.
pub const ERROR: u8 = 3;
/// `SIGNAL` message type.
pub const SIGNAL: u8 = 4;

/// Header flag: the sender does not want a reply.
pub const NO_REPLY_EXPECTED: u8 = 0x1;

/// Largest message the specification allows (128 MiB).
pub const MAX_MESSAGE: usize = 128 * 1024 * 1024;

/// Size of the fixed part of the header, up to and including the fields array length.
pub const FIXED_HEADER: usize = 16;

const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SENDER: u8 = 7;
const FIELD_SIGNATURE: u8 = 8;
const FIELD_UNIX_FDS: u8 = 9;

/// Why an incoming message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The first byte is neither `l` nor `B`.
    BadEndian(u8),
    /// The declared sizes exceed the protocol maximum.
    TooLarge,
    /// A length or offset points past the end of the message.
    Truncated,
    /// A string is not nul-terminated or not UTF-8.
    BadString,
    /// A header field has a type this parser cannot skip.
    BadFieldType(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadEndian(b) => write!(f, "bad endianness byte {b:#04x}"),
            WireError::TooLarge => f.write_str("message larger than 128 MiB"),
            WireError::Truncated => f.write_str("truncated message"),
            WireError::BadString => f.write_str("malformed string"),
            WireError::BadFieldType(t) => {
                write!(f, "unsupported header field type {:?}", *t as char)
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Rounds `n` up to a multiple of `a` (a power of two), or `None` on overflow.
fn align(n: usize, a: usize) -> Option<usize> {
    Some(n.checked_add(a - 1)? & !(a - 1))
}

/// Total length of the message whose first [`FIXED_HEADER`] bytes are `fixed`.
///
/// Used by the reader to learn how many bytes to wait for before parsing.
pub fn message_len(fixed: &[u8]) -> Result<usize, WireError> {
    let head = fixed.get(..FIXED_HEADER).ok_or(WireError::Truncated)?;
    let le = match head[0] {
        b'l' => true,
        b'B' => false,
        b => return Err(WireError::BadEndian(b)),
    };
    let body = read_u32(head, 4, le)? as usize;
    let fields = read_u32(head, 12, le)? as usize;
    let total = align(FIXED_HEADER + fields, 8)
        .and_then(|h| h.checked_add(body))
        .ok_or(WireError::TooLarge)?;
    if total > MAX_MESSAGE {
        return Err(WireError::TooLarge);
    }
    Ok(total)
}

fn read_u32(buf: &[u8], at: usize, le: bool) -> Result<u32, WireError> {
    let b: [u8; 4] = buf
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(WireError::Truncated)?;
    Ok(if le {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    })
}

/// The header of one incoming message, borrowing from the receive buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Message type (`METHOD_CALL` …).
    pub msg_type: u8,
    /// Header flags.
    pub flags: u8,
    /// Whether the message is little-endian.
    pub little_endian: bool,
    /// The sender's serial.
    pub serial: u32,
    /// `REPLY_SERIAL`, 0 when absent.
    pub reply_serial: u32,
    /// `PATH`.
    pub path: &'a str,
    /// `INTERFACE`.
    pub interface: &'a str,
    /// `MEMBER`.
    pub member: &'a str,
    /// `ERROR_NAME`.
    pub error_name: &'a str,
    /// `DESTINATION`.
    pub destination: &'a str,
    /// `SENDER`.
    pub sender: &'a str,
    /// `SIGNATURE` of the body.
    pub signature: &'a str,
    /// The body bytes.
    pub body: &'a [u8],
    /// `UNIX_FDS`: how many file descriptors travel with the message (0 when absent).
    pub unix_fds: u32,
}

/// Cursor over a message with absolute-offset alignment, as the wire format demands.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    le: bool,
}

impl<'a> Cursor<'a> {
    fn align(&mut self, a: usize) -> Result<(), WireError> {
        self.pos = align(self.pos, a).ok_or(WireError::Truncated)?;
        if self.pos > self.buf.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.align(4)?;
        let v = read_u32(self.buf, self.pos, self.le)?;
        self.pos += 4;
        Ok(v)
    }

    /// A string of `len` bytes followed by a nul.
    fn text(&mut self, len: usize) -> Result<&'a str, WireError> {
        let s = self.take(len)?;
        if self.byte()? != 0 {
            return Err(WireError::BadString);
        }
        std::str::from_utf8(s).map_err(|_| WireError::BadString)
    }

    fn string(&mut self) -> Result<&'a str, WireError> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    fn signature(&mut self) -> Result<&'a str, WireError> {
        let len = self.byte()? as usize;
        self.text(len)
    }
}

/// Parses the header of the complete message `msg` (exactly [`message_len`] bytes).
pub fn parse(msg: &[u8]) -> Result<Header<'_>, WireError> {
    let total = message_len(msg)?;
    if msg.len() < total {
        return Err(WireError::Truncated);
    }
    let le = msg[0] == b'l';
    let fields_len = read_u32(msg, 12, le)? as usize;
    let fields_end = FIXED_HEADER + fields_len;
    let body_start = align(fields_end, 8).ok_or(WireError::Truncated)?;
    let mut h = Header {
        msg_type: msg[1],
        flags: msg[2],
        little_endian: le,
        serial: read_u32(msg, 8, le)?,
        body: msg.get(body_start..total).ok_or(WireError::Truncated)?,
        ..Header::default()
    };
    let mut c = Cursor {
        buf: msg.get(..fields_end).ok_or(WireError::Truncated)?,
        pos: FIXED_HEADER,
        le,
    };
    while c.pos < fields_end {
        c.align(8)?;
        let code = c.byte()?;
        let sig = c.signature()?;
        let ty = match sig.as_bytes() {
            [t] => *t,
            _ => return Err(WireError::BadFieldType(sig.bytes().next().unwrap_or(0))),
        };
        match ty {
            b's' | b'o' => {
                let s = c.string()?;
                match code {
                    FIELD_PATH => h.path = s,
                    FIELD_INTERFACE => h.interface = s,
                    FIELD_MEMBER => h.member = s,
                    FIELD_ERROR_NAME => h.error_name = s,
                    FIELD_DESTINATION => h.destination = s,
                    FIELD_SENDER => h.sender = s,
                    _ => {}
                }
            }
            b'g' => {
                let s = c.signature()?;
                if code == FIELD_SIGNATURE {
                    h.signature = s;
                }
            }
            b'u' => {
                let v = c.u32()?;
                match code {
                    FIELD_REPLY_SERIAL => h.reply_serial = v,
                    FIELD_UNIX_FDS => h.unix_fds = v,
                    _ => {}
                }
            }
            // Other basic types only need skipping (unknown fields must be ignored).
            b'y' => c.align(1).and_then(|_| c.take(1).map(drop))?,
            b'n' | b'q' => c.align(2).and_then(|_| c.take(2).map(drop))?,
            b'b' | b'i' | b'h' => c.align(4).and_then(|_| c.take(4).map(drop))?,
            b'x' | b't' | b'd' => c.align(8).and_then(|_| c.take(8).map(drop))?,
            t => return Err(WireError::BadFieldType(t)),
        }
    }
    Ok(h)
}

/// Reads the string that starts a body whose signature begins with `s`.
pub fn body_string<'a>(h: &Header<'a>) -> Result<&'a str, WireError> {
    let mut c = Cursor {
        buf: h.body,
        pos: 0,
        le: h.little_endian,
    };
    c.string()
}

/// Sequential reader of a message body: strings, byte arrays and `u32`s, aligned as the wire
/// format demands (offsets relative to the body start, which is 8-aligned in the message).
pub struct BodyReader<'a> {
    c: Cursor<'a>,
}

impl<'a> BodyReader<'a> {
    /// A reader at the start of `h`'s body.
    pub fn new(h: &Header<'a>) -> BodyReader<'a> {
        BodyReader {
            c: Cursor {
                buf: h.body,
                pos: 0,
                le: h.little_endian,
            },
        }
    }

    /// A `s` or `o`.
    pub fn string(&mut self) -> Result<&'a str, WireError> {
        self.c.string()
    }

    /// A `u`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.c.u32()
    }

    /// An `ay`.
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.c.u32()? as usize;
        self.c.take(len)
    }
}

/// Fields of one outgoing message; empty strings are left out of the header.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Message type.
    pub msg_type: u8,
    /// Header flags.
    pub flags: u8,
    /// Serial (must be non-zero).
    pub serial: u32,
    /// `PATH`.
    pub path: &'a str,
    /// `INTERFACE`.
    pub interface: &'a str,
    /// `MEMBER`.
    pub member: &'a str,
    /// `DESTINATION`.
    pub destination: &'a str,
    /// `REPLY_SERIAL` (0 = absent).
    pub reply_serial: u32,
    /// `ERROR_NAME` (of an `ERROR`).
    pub error_name: &'a str,
    /// `SIGNATURE` of `body`.
    pub signature: &'a str,
    /// `UNIX_FDS` (0 = absent): file descriptors sent alongside the message.
    pub unix_fds: u32,
}

fn pad(out: &mut Vec<u8>, base: usize, a: usize) {
    while (out.len() - base) % a != 0 {
        out.push(0);
    }
}

fn field_str(out: &mut Vec<u8>, base: usize, code: u8, sig: u8, value: &str) {
    pad(out, base, 8);
    out.extend_from_slice(&[code, 1, sig, 0]);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// Appends the little-endian encoding of `m` with body `body` to `out`.
///
/// Appending (rather than returning a fresh buffer) lets callers batch many messages into one
/// write, which the rule-installation phase uses to pipeline thousands of `AddMatch` calls.
pub fn encode(out: &mut Vec<u8>, m: &Outgoing<'_>, body: &[u8]) {
    let base = out.len();
    out.extend_from_slice(&[b'l', m.msg_type, m.flags, 1]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&m.serial.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // fields length, patched below
    for (code, sig, v) in [
        (FIELD_PATH, b'o', m.path),
        (FIELD_INTERFACE, b's', m.interface),
        (FIELD_MEMBER, b's', m.member),
        (FIELD_DESTINATION, b's', m.destination),
        (FIELD_ERROR_NAME, b's', m.error_name),
    ] {
        if !v.is_empty() {
            field_str(out, base, code, sig, v);
        }
    }
    if m.reply_serial != 0 {
        pad(out, base, 8);
        out.extend_from_slice(&[FIELD_REPLY_SERIAL, 1, b'u', 0]);
        out.extend_from_slice(&m.reply_serial.to_le_bytes());
    }
    if m.unix_fds != 0 {
        pad(out, base, 8);
        out.extend_from_slice(&[FIELD_UNIX_FDS, 1, b'u', 0]);
        out.extend_from_slice(&m.unix_fds.to_le_bytes());
    }
    if !m.signature.is_empty() {
        pad(out, base, 8);
        out.extend_from_slice(&[FIELD_SIGNATURE, 1, b'g', 0, m.signature.len() as u8]);
        out.extend_from_slice(m.signature.as_bytes());
        out.push(0);
    }
    let fields_len = (out.len() - base - FIXED_HEADER) as u32;
    out[base + 12..base + 16].copy_from_slice(&fields_len.to_le_bytes());
    pad(out, base, 8);
    out.extend_from_slice(body);
}

/// Appends a body consisting of one string (`s`), starting at an aligned offset.
pub fn push_string(body: &mut Vec<u8>, s: &str) {
    while body.len() % 4 != 0 {
        body.push(0);
    }
    body.extend_from_slice(&(s.len() as u32).to_le_bytes());
    body.extend_from_slice(s.as_bytes());
    body.push(0);
}

/// Pads a body with zeros to a multiple of `a` (body offsets: the body starts 8-aligned).
pub fn pad_body(body: &mut Vec<u8>, a: usize) {
    while body.len() % a != 0 {
        body.push(0);
    }
}

/// Appends a `u32` (`u`).
pub fn push_u32(body: &mut Vec<u8>, v: u32) {
    pad_body(body, 4);
    body.extend_from_slice(&v.to_le_bytes());
}

/// Appends a signature (`g`, also the type of a variant's value).
pub fn push_signature(body: &mut Vec<u8>, sig: &str) {
    body.push(sig.len() as u8);
    body.extend_from_slice(sig.as_bytes());
    body.push(0);
}

/// Starts an array whose elements align to `elem_align` (8 for structs and dict entries):
/// the length placeholder and the padding after it. Pass the result to [`end_array`].
pub fn begin_array(body: &mut Vec<u8>, elem_align: usize) -> (usize, usize) {
    pad_body(body, 4);
    let at = body.len();
    body.extend_from_slice(&[0; 4]);
    pad_body(body, elem_align);
    (at, body.len())
}

/// Patches the length of an array started by [`begin_array`]: the bytes of its elements, not
/// counting the padding before the first.
pub fn end_array(body: &mut [u8], (at, start): (usize, usize)) {
    let len = (body.len() - start) as u32;
    body[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends a byte array (`ay`) holding `data`.
pub fn push_bytes(body: &mut Vec<u8>, data: &[u8]) {
    while body.len() % 4 != 0 {
        body.push(0);
    }
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(serial: u32) -> Outgoing<'a> {
        Outgoing {
            msg_type: METHOD_CALL,
            serial,
            path: "/org/freedesktop/DBus",
            interface: "org.freedesktop.DBus",
            member: "Hello",
            destination: "org.freedesktop.DBus",
            ..Outgoing::default()
        }
    }

    #[test]
    fn hello_matches_reference_bytes() {
        // Bytes of `Hello` laid out by hand from the specification: 8-aligned (yv) structs,
        // fields length 109 (0x6d) excluding the final padding before the (empty) body.
        let mut out = Vec::new();
        encode(&mut out, &call(1), &[]);
        let expected: &[u8] = b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x6d\x00\x00\x00\
\x01\x01o\x00\x15\x00\x00\x00/org/freedesktop/DBus\x00\x00\x00\
\x02\x01s\x00\x14\x00\x00\x00org.freedesktop.DBus\x00\x00\x00\x00\
\x03\x01s\x00\x05\x00\x00\x00Hello\x00\x00\x00\
\x06\x01s\x00\x14\x00\x00\x00org.freedesktop.DBus\x00\x00\x00\x00";
        assert_eq!(out, expected);
        assert_eq!(out.len() % 8, 0);
    }

    #[test]
    fn round_trip_all_fields() {
        let mut body = Vec::new();
        push_string(&mut body, "type='signal'");
        let m = Outgoing {
            msg_type: METHOD_RETURN,
            flags: NO_REPLY_EXPECTED,
            serial: 7,
            reply_serial: 42,
            signature: "s",
            ..call(7)
        };
        let mut out = vec![0xAA; 3]; // encoding must align relative to the message start
        encode(&mut out, &m, &body);
        let msg = &out[3..];
        assert_eq!(message_len(msg), Ok(msg.len()));
        let h = parse(msg).unwrap();
        assert_eq!(h.msg_type, METHOD_RETURN);
        assert_eq!(h.flags, NO_REPLY_EXPECTED);
        assert_eq!(h.serial, 7);
        assert_eq!(h.reply_serial, 42);
        assert_eq!(h.path, "/org/freedesktop/DBus");
        assert_eq!(h.interface, "org.freedesktop.DBus");
        assert_eq!(h.member, "Hello");
        assert_eq!(h.destination, "org.freedesktop.DBus");
        assert_eq!(h.signature, "s");
        assert_eq!(h.sender, "");
        assert_eq!(body_string(&h), Ok("type='signal'"));
    }

    #[test]
    fn batch_encodes_back_to_back() {
        let mut out = Vec::new();
        encode(&mut out, &call(1), &[]);
        let first = out.len();
        let mut body = Vec::new();
        push_bytes(&mut body, &[1, 2, 3]);
        encode(
            &mut out,
            &Outgoing {
                signature: "ay",
                ..call(2)
            },
            &body,
        );
        assert_eq!(message_len(&out), Ok(first));
        let second = &out[first..];
        let h = parse(second).unwrap();
        assert_eq!(h.serial, 2);
        assert_eq!(h.body, &[3, 0, 0, 0, 1, 2, 3]);
    }

    #[test]
    fn parses_big_endian_with_sender_and_unknown_fields() {
        // A big-endian signal from the bus: SENDER, an unknown field 0x7f of type `t`, ERROR_NAME.
        let mut m = vec![b'B', SIGNAL, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0];
        m.extend_from_slice(&[FIELD_SENDER, 1, b's', 0, 0, 0, 0, 4]);
        m.extend_from_slice(b":1.5\0");
        m.extend_from_slice(&[0, 0, 0]);
        m.extend_from_slice(&[0x7f, 1, b't', 0, 0, 0, 0, 0]);
        m.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        m.extend_from_slice(&[FIELD_REPLY_SERIAL, 1, b'u', 0, 0, 0, 1, 2]);
        let fields = (m.len() - FIXED_HEADER) as u32;
        m[12..16].copy_from_slice(&fields.to_be_bytes());
        let h = parse(&m).unwrap();
        assert!(!h.little_endian);
        assert_eq!(h.serial, 9);
        assert_eq!(h.sender, ":1.5");
        assert_eq!(h.reply_serial, 0x102);
        assert!(h.body.is_empty());
    }

    #[test]
    fn rejects_bad_input() {
        let mut good = Vec::new();
        encode(&mut good, &call(1), &[]);
        // Too short for the fixed header.
        assert_eq!(message_len(&good[..15]), Err(WireError::Truncated));
        // Bad endianness.
        let mut bad = good.clone();
        bad[0] = b'x';
        assert_eq!(parse(&bad), Err(WireError::BadEndian(b'x')));
        // Body length beyond 128 MiB.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(message_len(&bad), Err(WireError::TooLarge));
        // Declared longer than the bytes we have.
        assert_eq!(parse(&good[..good.len() - 1]), Err(WireError::Truncated));
        // A string length running past the fields array.
        let mut bad = good.clone();
        bad[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse(&bad), Err(WireError::Truncated));
        // Missing nul terminator.
        let mut bad = good.clone();
        bad[24 + 21] = b'x';
        assert_eq!(parse(&bad), Err(WireError::BadString));
        // Container-typed header field.
        let mut bad = good.clone();
        bad[18] = b'a';
        assert_eq!(parse(&bad), Err(WireError::BadFieldType(b'a')));
        // Multi-character field signature.
        let mut bad = good.clone();
        bad[17] = 2;
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut body = Vec::new();
        push_string(&mut body, "x");
        let mut good = Vec::new();
        encode(
            &mut good,
            &Outgoing {
                signature: "s",
                reply_serial: 3,
                ..call(5)
            },
            &body,
        );
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix {n} parsed");
        }
        // And every single-byte corruption is handled without panicking.
        for i in 0..good.len() {
            for v in [0u8, 0xff, b'a', 8] {
                let mut m = good.clone();
                m[i] = v;
                let _ = parse(&m);
            }
        }
    }

    #[test]
    fn body_string_rejects_short_body() {
        let h = Header {
            little_endian: true,
            body: &[5, 0, 0, 0, b'a'],
            ..Header::default()
        };
        assert_eq!(body_string(&h), Err(WireError::Truncated));
    }
}
