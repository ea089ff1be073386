//! The D-Bus wire protocol: framing, header and body validation, marshalling for the driver,
//! SASL, and addresses. Bus decisions (routing, names, policy) live in [`crate::bus`].
//!
//! Nothing here makes a system call, so every parser and the SASL exchange can be tested and
//! fuzzed on plain bytes: the reactor does the reading and writing, and the SASL machine asks
//! for what it needs from the system (random challenges, the user database, DBUS_COOKIE_SHA1
//! cookies) through [`auth::AuthWorld`]. The `architecture` integration test enforces this.

pub mod address;
pub mod auth;
pub mod body;
pub mod marshal;
pub mod message;
pub mod names;
pub mod signature;

/// Why a byte sequence is not a valid D-Bus message. Any of these closes the sender's
/// connection (the spec's "close, don't answer" rule); the text goes to the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// First byte is neither `l` nor `B`.
    BadEndian,
    /// Protocol version is not 1.
    BadVersion,
    /// Message type 0.
    BadType,
    /// Serial 0.
    ZeroSerial,
    /// Total size exceeds the configured or protocol limit.
    TooLarge,
    /// A header field is malformed, duplicated, of the wrong type, or required but missing.
    BadHeader(&'static str),
    /// A signature is not valid.
    BadSignature,
    /// The body does not match its signature, or a value is invalid.
    BadBody(&'static str),
    /// UNIX_FDS disagrees with the fds actually received, or exceeds the limit.
    BadFds,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadEndian => f.write_str("invalid byte-order mark"),
            WireError::BadVersion => f.write_str("unsupported protocol version"),
            WireError::BadType => f.write_str("message type 0"),
            WireError::ZeroSerial => f.write_str("serial 0"),
            WireError::TooLarge => f.write_str("message too large"),
            WireError::BadHeader(why) => write!(f, "invalid header: {why}"),
            WireError::BadSignature => f.write_str("invalid signature"),
            WireError::BadBody(why) => write!(f, "invalid body: {why}"),
            WireError::BadFds => f.write_str("unix fd count mismatch"),
        }
    }
}

impl std::error::Error for WireError {}

/// Byte order of a message, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// `l`
    Little,
    /// `B`
    Big,
}

impl Endian {
    /// Decode the byte-order mark.
    pub fn from_mark(b: u8) -> Option<Endian> {
        match b {
            b'l' => Some(Endian::Little),
            b'B' => Some(Endian::Big),
            _ => None,
        }
    }
    /// The byte-order mark.
    pub fn mark(self) -> u8 {
        match self {
            Endian::Little => b'l',
            Endian::Big => b'B',
        }
    }
    /// Read a u16 in this byte order.
    #[inline]
    pub fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }
    /// Read a u32 in this byte order.
    #[inline]
    pub fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }
    /// Read a u64 in this byte order.
    #[inline]
    pub fn u64(self, b: [u8; 8]) -> u64 {
        match self {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        }
    }
    /// Encode a u32 in this byte order.
    #[inline]
    pub fn put_u32(self, v: u32) -> [u8; 4] {
        match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }
}

/// Round `n` up to a multiple of `a` (a power of two).
#[inline]
pub const fn align(n: usize, a: usize) -> usize {
    (n + a - 1) & !(a - 1)
}

/// The value of one hex digit (either case).
pub(crate) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Append `b` as two lower-case hex digits (SASL and address escaping both use lower case).
pub(crate) fn push_hex(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(DIGITS[usize::from(b >> 4)]));
    out.push(char::from(DIGITS[usize::from(b & 0xf)]));
}

/// Every string of up to `max_len` bytes over `alphabet`, the empty one first, for tests that
/// check a fast validator against its reference grammar exhaustively.
#[cfg(test)]
pub(crate) fn all_strings(alphabet: &[u8], max_len: usize) -> Vec<Vec<u8>> {
    let mut all = vec![Vec::new()];
    let mut layer = vec![Vec::new()];
    for _ in 0..max_len {
        let next: Vec<Vec<u8>> = layer
            .iter()
            .flat_map(|p: &Vec<u8>| {
                alphabet.iter().map(move |&c| {
                    let mut v = p.clone();
                    v.push(c);
                    v
                })
            })
            .collect();
        all.extend(next.iter().cloned());
        layer = next;
    }
    all
}
