//! Marshalling for messages the bus itself produces (driver replies, signals, errors) and
//! reading of driver-call arguments. Never used to relay a client's message.

use super::message::{self, field, Message};
use super::names::is_valid_object_path;
use super::{align, Endian, WireError};
use std::rc::Rc;

/// Maximum byte length of an array's payload (spec "Marshalling containers").
const MAX_ARRAY_LEN: usize = 1 << 26;
/// Maximum total container nesting (arrays, structs, dict entries, variants) the reader follows.
const MAX_DEPTH: u32 = 64;

/// Alignment of the type starting with `code` (1 for unknown codes; the reader rejects those).
fn alignment(code: u8) -> usize {
    match code {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

/// Whether `code` is a basic type (allowed as a dict key).
fn is_basic(code: u8) -> bool {
    matches!(
        code,
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b's' | b'o' | b'g' | b'h'
    )
}

/// Writes a message body in little-endian byte order, tracking the top-level signature.
/// Offsets are relative to the body start (8-aligned in the final message).
///
/// The writer trusts its caller: strings must not contain NUL, object paths and signatures
/// must be valid, and the types written inside containers must match the signatures given.
/// Nothing here panics on bad input, but the result would then not be a valid body.
#[derive(Debug, Default, Clone)]
pub struct BodyWriter {
    buf: Vec<u8>,
    sig: String,
    depth: u32,
}

impl BodyWriter {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }
    /// The signature of what was written at top level.
    pub fn signature(&self) -> &str {
        &self.sig
    }
    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Record `code` in the signature only for top-level values; containers record their
    /// whole type themselves, so nothing written inside them may add to it.
    fn top(&mut self, code: &str) {
        if self.depth == 0 {
            self.sig.push_str(code);
        }
    }
    fn pad(&mut self, a: usize) {
        let n = align(self.buf.len(), a);
        self.buf.resize(n, 0);
    }
    fn raw_u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn raw_u64(&mut self, v: u64) {
        self.pad(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn patch_u32(&mut self, at: usize, v: u32) {
        if let Some(s) = self.buf.get_mut(at..at + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }
    fn raw_str(&mut self, v: &str) {
        // Lengths beyond u32 cannot fit any message; saturate instead of panicking.
        self.raw_u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }
    fn raw_sig(&mut self, v: &str) {
        self.buf.push(u8::try_from(v.len()).unwrap_or(u8::MAX));
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }
    /// Array body: length word, padding to `elem_align` (present even when empty), elements,
    /// then the length patched to count element bytes only.
    fn raw_array(&mut self, elem_align: usize, f: impl FnOnce(&mut Self)) {
        self.pad(4);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.pad(elem_align);
        let start = self.buf.len();
        self.depth += 1;
        f(self);
        self.depth -= 1;
        let len = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.patch_u32(len_at, len);
    }
    fn nested(&mut self, f: impl FnOnce(&mut Self)) {
        self.depth += 1;
        f(self);
        self.depth -= 1;
    }

    /// BYTE
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.top("y");
        self.buf.push(v);
        self
    }
    /// BOOLEAN
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.top("b");
        self.raw_u32(u32::from(v));
        self
    }
    /// INT16
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.top("n");
        self.pad(2);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// UINT16
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.top("q");
        self.pad(2);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// UINT32
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.top("u");
        self.raw_u32(v);
        self
    }
    /// INT32
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.top("i");
        self.raw_u32(v as u32);
        self
    }
    /// INT64
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.top("x");
        self.raw_u64(v as u64);
        self
    }
    /// UINT64
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.top("t");
        self.raw_u64(v);
        self
    }
    /// DOUBLE
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.top("d");
        self.raw_u64(v.to_bits());
        self
    }
    /// UNIX_FD index
    pub fn fd(&mut self, index: u32) -> &mut Self {
        self.top("h");
        self.raw_u32(index);
        self
    }
    /// STRING
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.top("s");
        self.raw_str(v);
        self
    }
    /// OBJECT_PATH (caller guarantees validity)
    pub fn object_path(&mut self, v: &str) -> &mut Self {
        self.top("o");
        self.raw_str(v);
        self
    }
    /// SIGNATURE (caller guarantees validity)
    pub fn signature_value(&mut self, v: &str) -> &mut Self {
        self.top("g");
        self.raw_sig(v);
        self
    }
    /// ARRAY of `elem_sig`; `f` writes the elements (dict entries with `dict_entry`).
    pub fn array(&mut self, elem_sig: &str, f: impl FnOnce(&mut Self)) -> &mut Self {
        if self.depth == 0 {
            self.sig.push('a');
            self.sig.push_str(elem_sig);
        }
        let a = elem_sig.bytes().next().map_or(1, alignment);
        self.raw_array(a, f);
        self
    }
    /// STRUCT with signature `sig` (the inner types, without parentheses).
    pub fn structure(&mut self, sig: &str, f: impl FnOnce(&mut Self)) -> &mut Self {
        if self.depth == 0 {
            self.sig.push('(');
            self.sig.push_str(sig);
            self.sig.push(')');
        }
        self.pad(8);
        self.nested(f);
        self
    }
    /// DICT_ENTRY inside an array; `f` writes key and value.
    pub fn dict_entry(&mut self, f: impl FnOnce(&mut Self)) -> &mut Self {
        self.pad(8);
        self.nested(f);
        self
    }
    /// VARIANT holding one value of type `sig`, written by `f`.
    pub fn variant(&mut self, sig: &str, f: impl FnOnce(&mut Self)) -> &mut Self {
        self.top("v");
        self.raw_sig(sig);
        self.nested(f);
        self
    }
    /// ARRAY OF BYTE from a slice.
    pub fn byte_array(&mut self, v: &[u8]) -> &mut Self {
        self.top("ay");
        self.raw_array(1, |w| w.buf.extend_from_slice(v));
        self
    }
    /// ARRAY OF STRING from an iterator.
    pub fn str_array<'a>(&mut self, v: impl IntoIterator<Item = &'a str>) -> &mut Self {
        self.top("as");
        self.raw_array(4, |w| {
            for s in v {
                w.raw_str(s);
            }
        });
        self
    }
    /// Any `Value` (with its own signature).
    pub fn value(&mut self, v: &Value) -> &mut Self {
        if self.depth == 0 {
            let mut sig = std::mem::take(&mut self.sig).into_bytes();
            v.push_sig(&mut sig);
            // Only whole &str pieces and ASCII codes were appended, so this is UTF-8.
            self.sig = String::from_utf8(sig).unwrap_or_default();
        }
        self.nested(|w| w.write_value(v));
        self
    }

    /// Write `v` without touching the signature (callers are at depth > 0).
    fn write_value(&mut self, v: &Value) {
        match v {
            Value::Byte(x) => {
                self.u8(*x);
            }
            Value::Bool(x) => {
                self.bool(*x);
            }
            Value::I16(x) => {
                self.i16(*x);
            }
            Value::U16(x) => {
                self.u16(*x);
            }
            Value::I32(x) => {
                self.i32(*x);
            }
            Value::U32(x) => {
                self.u32(*x);
            }
            Value::I64(x) => {
                self.i64(*x);
            }
            Value::U64(x) => {
                self.u64(*x);
            }
            Value::Double(x) => {
                self.f64(*x);
            }
            Value::Str(s) | Value::ObjectPath(s) => self.raw_str(s),
            Value::Signature(s) => self.raw_sig(s),
            Value::Fd(x) => {
                self.fd(*x);
            }
            Value::Array(elem_sig, elems) => {
                let a = elem_sig.bytes().next().map_or(1, alignment);
                self.raw_array(a, |w| {
                    for e in elems {
                        w.write_value(e);
                    }
                });
            }
            Value::Dict(_, _, entries) => {
                self.raw_array(8, |w| {
                    for (k, v) in entries {
                        w.pad(8);
                        w.write_value(k);
                        w.write_value(v);
                    }
                });
            }
            Value::Struct(fields) => {
                self.pad(8);
                for f in fields {
                    self.write_value(f);
                }
            }
            Value::Variant(inner) => {
                // Signature written straight into the buffer (length patched) to avoid a
                // temporary String per variant.
                let len_at = self.buf.len();
                self.buf.push(0);
                inner.push_sig(&mut self.buf);
                let len = u8::try_from(self.buf.len() - len_at - 1).unwrap_or(u8::MAX);
                if let Some(b) = self.buf.get_mut(len_at) {
                    *b = len;
                }
                self.buf.push(0);
                self.write_value(inner);
            }
        }
    }
}

/// Builds a complete message (little-endian) originated by the bus.
///
/// The flags byte defaults to NO_REPLY_EXPECTED, which the bus sets on everything it
/// originates, as dbus-daemon does; use [`MessageBuilder::flags`] to change it.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    msg_type: u8,
    flags: u8,
    path: Option<String>,
    interface: Option<String>,
    member: Option<String>,
    error_name: Option<String>,
    reply_serial: Option<u32>,
    destination: Option<String>,
    sender: Option<String>,
    unix_fds: u32,
}

impl MessageBuilder {
    fn of_type(msg_type: u8) -> Self {
        MessageBuilder {
            msg_type,
            flags: message::flags::NO_REPLY_EXPECTED,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            unix_fds: 0,
        }
    }
    /// A METHOD_CALL.
    pub fn method_call(path: &str, interface: Option<&str>, member: &str) -> Self {
        let mut b = Self::of_type(message::METHOD_CALL);
        b.path = Some(path.to_owned());
        b.interface = interface.map(str::to_owned);
        b.member = Some(member.to_owned());
        b
    }
    /// A METHOD_RETURN for `reply_serial`.
    pub fn method_return(reply_serial: u32) -> Self {
        let mut b = Self::of_type(message::METHOD_RETURN);
        b.reply_serial = Some(reply_serial);
        b
    }
    /// An ERROR named `name` for `reply_serial`.
    pub fn error(name: &str, reply_serial: u32) -> Self {
        let mut b = Self::of_type(message::ERROR);
        b.error_name = Some(name.to_owned());
        b.reply_serial = Some(reply_serial);
        b
    }
    /// A SIGNAL.
    pub fn signal(path: &str, interface: &str, member: &str) -> Self {
        let mut b = Self::of_type(message::SIGNAL);
        b.path = Some(path.to_owned());
        b.interface = Some(interface.to_owned());
        b.member = Some(member.to_owned());
        b
    }
    /// Set DESTINATION.
    pub fn destination(mut self, v: &str) -> Self {
        self.destination = Some(v.to_owned());
        self
    }
    /// Set SENDER.
    pub fn sender(mut self, v: &str) -> Self {
        self.sender = Some(v.to_owned());
        self
    }
    /// Set the flags byte.
    pub fn flags(mut self, v: u8) -> Self {
        self.flags = v;
        self
    }
    /// Set UNIX_FDS.
    pub fn unix_fds(mut self, n: u32) -> Self {
        self.unix_fds = n;
        self
    }
    /// Serialize with `serial` and `body` (SIGNATURE from the body writer; omitted if empty).
    pub fn build(&self, serial: u32, body: &BodyWriter) -> Vec<u8> {
        let header = Header {
            msg_type: self.msg_type,
            flags: self.flags,
            serial,
            path: self.path.as_deref(),
            interface: self.interface.as_deref(),
            member: self.member.as_deref(),
            error_name: self.error_name.as_deref(),
            reply_serial: self.reply_serial,
            destination: self.destination.as_deref(),
            sender: self.sender.as_deref(),
            unix_fds: self.unix_fds,
        };
        let body = BodyRef::Marshalled {
            sig: &body.sig,
            bytes: &body.buf,
        };
        let mut out = vec![0; header.encoded_len(body)];
        header.encode(body, &mut out);
        out
    }
}

/// The header of a message the bus originates, borrowing its strings: what a
/// [`MessageBuilder`] owns, for messages built on hot paths (Hello's reply and NameAcquired)
/// without an allocation per field. Little-endian, protocol version 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct Header<'a> {
    /// Message type (`message::METHOD_RETURN`, ...).
    pub msg_type: u8,
    /// Flags byte.
    pub flags: u8,
    /// The message's serial.
    pub serial: u32,
    /// PATH.
    pub path: Option<&'a str>,
    /// INTERFACE.
    pub interface: Option<&'a str>,
    /// MEMBER.
    pub member: Option<&'a str>,
    /// ERROR_NAME.
    pub error_name: Option<&'a str>,
    /// REPLY_SERIAL.
    pub reply_serial: Option<u32>,
    /// DESTINATION.
    pub destination: Option<&'a str>,
    /// SENDER.
    pub sender: Option<&'a str>,
    /// UNIX_FDS (omitted when 0).
    pub unix_fds: u32,
}

/// The body [`Header::encode`] appends.
#[derive(Debug, Clone, Copy)]
pub enum BodyRef<'a> {
    /// Already marshalled (by a [`BodyWriter`]: little-endian from an 8-aligned start) with
    /// its signature; no SIGNATURE field when both are empty.
    Marshalled {
        /// The body's signature.
        sig: &'a str,
        /// The body's bytes.
        bytes: &'a [u8],
    },
    /// A single STRING (signature `s`), marshalled in place.
    Str(&'a str),
}

/// A cursor writing into a zeroed slice: padding is skipped, not written, and whatever
/// does not fit is dropped. With `WRITE` false it only counts: the same code measures a
/// message before its buffer exists.
struct Cursor<'b, const WRITE: bool> {
    dst: &'b mut [u8],
    pos: usize,
}

impl<const WRITE: bool> Cursor<'_, WRITE> {
    fn put(&mut self, b: &[u8]) {
        let end = self.pos.saturating_add(b.len());
        if WRITE {
            if let Some(d) = self.dst.get_mut(self.pos..end) {
                d.copy_from_slice(b);
            }
        }
        self.pos = end;
    }
    fn pad(&mut self, a: usize) {
        self.pos = align(self.pos, a);
    }
    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.put(&v.to_le_bytes());
    }
    fn str(&mut self, v: &str) {
        // Lengths beyond u32 cannot fit any message; saturate instead of panicking.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.put(v.as_bytes());
        self.put(&[0]);
    }
    /// A header field: 8-aligned `(y v)` whose variant has the one-character signature `code`.
    fn field(&mut self, code: u8, sig: u8) {
        self.pad(8);
        self.put(&[code, 1, sig, 0]);
    }
}

impl Header<'_> {
    /// Write the whole message (header, padding, `body`) at the start of `dst`, which must
    /// be zeroed (padding bytes are left as they are); returns its length. Nothing is
    /// written past the end of `dst`.
    pub fn encode(&self, body: BodyRef<'_>, dst: &mut [u8]) -> usize {
        self.encode_with(body, Cursor::<true> { dst, pos: 0 })
    }

    /// The length [`Header::encode`] writes: the buffer to allocate.
    pub fn encoded_len(&self, body: BodyRef<'_>) -> usize {
        self.encode_with(
            body,
            Cursor::<false> {
                dst: &mut [],
                pos: 0,
            },
        )
    }

    fn encode_with<const WRITE: bool>(&self, body: BodyRef<'_>, mut w: Cursor<'_, WRITE>) -> usize {
        let (sig, body_len) = match body {
            BodyRef::Marshalled { sig, bytes } => (sig, bytes.len()),
            BodyRef::Str(s) => ("s", 4 + s.len() + 1),
        };
        w.put(&[
            Endian::Little.mark(),
            self.msg_type,
            self.flags,
            1, // protocol version
        ]);
        w.u32(u32::try_from(body_len).unwrap_or(u32::MAX));
        w.u32(self.serial);
        w.pos += 4; // the fields array's length, patched below
        let strs = [
            (field::PATH, b'o', self.path),
            (field::INTERFACE, b's', self.interface),
            (field::MEMBER, b's', self.member),
            (field::ERROR_NAME, b's', self.error_name),
        ];
        for (code, t, v) in strs {
            if let Some(v) = v {
                w.field(code, t);
                w.str(v);
            }
        }
        if let Some(rs) = self.reply_serial {
            w.field(field::REPLY_SERIAL, b'u');
            w.u32(rs);
        }
        for (code, v) in [
            (field::DESTINATION, self.destination),
            (field::SENDER, self.sender),
        ] {
            if let Some(v) = v {
                w.field(code, b's');
                w.str(v);
            }
        }
        if !sig.is_empty() || body_len != 0 {
            w.field(field::SIGNATURE, b'g');
            w.put(&[u8::try_from(sig.len()).unwrap_or(u8::MAX)]);
            w.put(sig.as_bytes());
            w.put(&[0]);
        }
        if self.unix_fds > 0 {
            w.field(field::UNIX_FDS, b'u');
            w.u32(self.unix_fds);
        }
        let fields_len = u32::try_from(w.pos - 16).unwrap_or(u32::MAX);
        if let Some(d) = w.dst.get_mut(12..16).filter(|_| WRITE) {
            d.copy_from_slice(&fields_len.to_le_bytes());
        }
        w.pad(8);
        match body {
            BodyRef::Marshalled { bytes, .. } => w.put(bytes),
            BodyRef::Str(s) => w.str(s),
        }
        w.pos
    }
}

/// A message the bus originates, encoded straight into a shared buffer allocated once at
/// its final size (no intermediate `Vec`).
pub fn encode_rc(header: Header<'_>, body: BodyRef<'_>) -> Rc<[u8]> {
    let len = header.encoded_len(body);
    // An exact-size iterator: `collect` allocates the shared buffer once.
    let mut buf: Rc<[u8]> = std::iter::repeat_n(0, len).collect();
    if let Some(dst) = Rc::get_mut(&mut buf) {
        header.encode(body, dst);
    }
    buf
}

/// An owned D-Bus value, for arguments the bus must keep or echo (Containers1 metadata,
/// named arguments). Dicts keep their entries in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// y
    Byte(u8),
    /// b
    Bool(bool),
    /// n
    I16(i16),
    /// q
    U16(u16),
    /// i
    I32(i32),
    /// u
    U32(u32),
    /// x
    I64(i64),
    /// t
    U64(u64),
    /// d
    Double(f64),
    /// s
    Str(String),
    /// o
    ObjectPath(String),
    /// g
    Signature(String),
    /// h (index into the message's fds)
    Fd(u32),
    /// a + element signature + elements
    Array(String, Vec<Value>),
    /// a{..}: key/value signatures and entries
    Dict(String, String, Vec<(Value, Value)>),
    /// ( ... )
    Struct(Vec<Value>),
    /// v
    Variant(Box<Value>),
}

impl Value {
    /// The value's signature.
    pub fn signature(&self) -> String {
        let mut v = Vec::new();
        self.push_sig(&mut v);
        // Only whole &str pieces and ASCII codes were appended, so this is UTF-8.
        String::from_utf8(v).unwrap_or_default()
    }

    /// Append the signature to `out` (used by the writer to avoid a String per variant).
    fn push_sig(&self, out: &mut Vec<u8>) {
        let code = match self {
            Value::Byte(_) => b'y',
            Value::Bool(_) => b'b',
            Value::I16(_) => b'n',
            Value::U16(_) => b'q',
            Value::I32(_) => b'i',
            Value::U32(_) => b'u',
            Value::I64(_) => b'x',
            Value::U64(_) => b't',
            Value::Double(_) => b'd',
            Value::Str(_) => b's',
            Value::ObjectPath(_) => b'o',
            Value::Signature(_) => b'g',
            Value::Fd(_) => b'h',
            Value::Variant(_) => b'v',
            Value::Array(elem, _) => {
                out.push(b'a');
                out.extend_from_slice(elem.as_bytes());
                return;
            }
            Value::Dict(k, v, _) => {
                out.extend_from_slice(b"a{");
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(v.as_bytes());
                out.push(b'}');
                return;
            }
            Value::Struct(fields) => {
                out.push(b'(');
                for f in fields {
                    f.push_sig(out);
                }
                out.push(b')');
                return;
            }
        };
        out.push(code);
    }
}

/// End (exclusive) of the single complete type starting at `sig[start]`. Iterative, so a
/// hostile signature cannot exhaust the stack; it only finds the extent; the reader checks
/// the structure in detail while reading.
fn type_end(sig: &[u8], start: usize) -> Result<usize, WireError> {
    let mut p = start;
    let mut open = 0usize;
    loop {
        let c = *sig
            .get(p)
            .ok_or(WireError::BadBody("truncated signature"))?;
        p += 1;
        match c {
            b'a' => continue,
            b'(' | b'{' => {
                open += 1;
                continue;
            }
            b')' | b'}' => {
                open = open
                    .checked_sub(1)
                    .ok_or(WireError::BadBody("unbalanced signature"))?;
            }
            c if is_basic(c) || c == b'v' => {}
            _ => return Err(WireError::BadBody("invalid type code")),
        }
        if open == 0 {
            return Ok(p);
        }
    }
}

/// Reads the body of a received message. Reads follow the message's byte order; the body
/// has already been validated, but every read still checks bounds and returns errors.
///
/// A failed read leaves the reader where it was.
#[derive(Debug, Clone)]
pub struct BodyReader<'a> {
    endian: Endian,
    body: &'a [u8],
    sig: &'a [u8],
    pos: usize,
    sig_pos: usize,
}

const MISMATCH: WireError = WireError::BadBody("type mismatch");
const SHORT: WireError = WireError::BadBody("body too short");

impl<'a> BodyReader<'a> {
    /// A reader over `msg`'s body.
    pub fn new(msg: &'a Message) -> Self {
        Self::from_parts(msg.endian, msg.signature(), msg.body())
    }

    /// A reader over a body given in pieces: its byte order, its signature and its bytes
    /// (which must start at an 8-aligned message offset).
    pub(crate) fn from_parts(endian: Endian, sig: &'a str, body: &'a [u8]) -> Self {
        BodyReader {
            endian,
            body,
            sig: sig.as_bytes(),
            pos: 0,
            sig_pos: 0,
        }
    }

    /// Byte offset of the next read within the body (for measuring an argument's size).
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Whether every top-level argument has been read.
    pub fn at_end(&self) -> bool {
        self.sig_pos >= self.sig.len()
    }

    /// Step over the next argument, whatever its type, without allocating. With `Clone` and
    /// [`BodyReader::offset`] this measures an argument before decoding it.
    pub fn skip(&mut self) -> Result<(), WireError> {
        self.txn(|r| {
            let mut sp = r.sig_pos;
            r.walk(r.sig, &mut sp, 0, false)?;
            r.sig_pos = sp;
            Ok(())
        })
    }

    /// The next STRING (or OBJECT_PATH / SIGNATURE as text).
    pub fn str(&mut self) -> Result<&'a str, WireError> {
        self.txn(|r| {
            let code = r.expect_code()?;
            let s = match code {
                b's' | b'o' => r.raw_str(code)?,
                b'g' => r.raw_sig()?,
                _ => return Err(MISMATCH),
            };
            r.sig_pos += 1;
            Ok(s)
        })
    }
    /// The next UINT32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.txn(|r| {
            if r.expect_code()? != b'u' {
                return Err(MISMATCH);
            }
            let v = r.raw_u32()?;
            r.sig_pos += 1;
            Ok(v)
        })
    }
    /// The next BOOLEAN.
    pub fn bool(&mut self) -> Result<bool, WireError> {
        self.txn(|r| {
            if r.expect_code()? != b'b' {
                return Err(MISMATCH);
            }
            let v = r.raw_bool()?;
            r.sig_pos += 1;
            Ok(v)
        })
    }
    /// The next ARRAY OF STRING.
    pub fn str_array(&mut self) -> Result<Vec<&'a str>, WireError> {
        self.txn(|r| {
            let rest = r.sig.get(r.sig_pos..).unwrap_or_default();
            let code = match rest {
                [] => return Err(WireError::BadBody("missing argument")),
                [b'a', c @ (b's' | b'o' | b'g'), ..] => *c,
                _ => return Err(MISMATCH),
            };
            let end = r.array_start(alignment(code))?;
            let mut out = Vec::new();
            while r.pos < end {
                out.push(if code == b'g' {
                    r.raw_sig()?
                } else {
                    r.raw_str(code)?
                });
            }
            r.array_finish(end)?;
            r.sig_pos += 2;
            Ok(out)
        })
    }
    /// The next ARRAY OF DICT_ENTRY<STRING,STRING>.
    pub fn str_str_dict(&mut self) -> Result<Vec<(&'a str, &'a str)>, WireError> {
        self.txn(|r| {
            let rest = r.sig.get(r.sig_pos..).unwrap_or_default();
            if rest.is_empty() {
                return Err(WireError::BadBody("missing argument"));
            }
            if !rest.starts_with(b"a{ss}") {
                return Err(MISMATCH);
            }
            let end = r.array_start(8)?;
            let mut out = Vec::new();
            while r.pos < end {
                r.align(8)?;
                let k = r.raw_str(b's')?;
                let v = r.raw_str(b's')?;
                out.push((k, v));
            }
            r.array_finish(end)?;
            r.sig_pos += 5;
            Ok(out)
        })
    }
    /// The next value of any type, as an owned `Value`.
    pub fn value(&mut self) -> Result<Value, WireError> {
        self.txn(|r| {
            let mut sp = r.sig_pos;
            let v = r.walk(r.sig, &mut sp, 0, true)?;
            r.sig_pos = sp;
            v.ok_or(WireError::BadBody("no value"))
        })
    }

    /// Run `f`, restoring the position if it fails so a caller can retry another type.
    fn txn<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        let (pos, sig_pos) = (self.pos, self.sig_pos);
        let r = f(self);
        if r.is_err() {
            self.pos = pos;
            self.sig_pos = sig_pos;
        }
        r
    }

    /// The next top-level type code.
    fn expect_code(&self) -> Result<u8, WireError> {
        self.sig
            .get(self.sig_pos)
            .copied()
            .ok_or(WireError::BadBody("missing argument"))
    }

    fn align(&mut self, a: usize) -> Result<(), WireError> {
        let p = align(self.pos, a);
        if p > self.body.len() {
            return Err(SHORT);
        }
        self.pos = p;
        Ok(())
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(SHORT)?;
        let b = self.body.get(self.pos..end).ok_or(SHORT)?;
        self.pos = end;
        Ok(b)
    }
    fn take_n<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.align(N)?;
        let b = self.take(N)?;
        b.try_into().map_err(|_| SHORT)
    }
    fn raw_u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take_n::<1>()?[0])
    }
    fn raw_u16(&mut self) -> Result<u16, WireError> {
        Ok(self.endian.u16(self.take_n()?))
    }
    fn raw_u32(&mut self) -> Result<u32, WireError> {
        Ok(self.endian.u32(self.take_n()?))
    }
    fn raw_u64(&mut self) -> Result<u64, WireError> {
        Ok(self.endian.u64(self.take_n()?))
    }
    fn raw_bool(&mut self) -> Result<bool, WireError> {
        match self.raw_u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::BadBody("invalid boolean")),
        }
    }
    /// Text bytes followed by a NUL; interior NULs and bad UTF-8 rejected.
    fn text(&mut self, len: usize) -> Result<&'a str, WireError> {
        let b = self.take(len)?;
        if self.take(1)? != [0] {
            return Err(WireError::BadBody("string not NUL-terminated"));
        }
        if b.contains(&0) {
            return Err(WireError::BadBody("NUL in string"));
        }
        std::str::from_utf8(b).map_err(|_| WireError::BadBody("invalid UTF-8"))
    }
    /// STRING or OBJECT_PATH (`code`), the latter checked for path syntax.
    fn raw_str(&mut self, code: u8) -> Result<&'a str, WireError> {
        let len = self.raw_u32()? as usize;
        let s = self.text(len)?;
        if code == b'o' && !is_valid_object_path(s) {
            return Err(WireError::BadBody("invalid object path"));
        }
        Ok(s)
    }
    fn raw_sig(&mut self) -> Result<&'a str, WireError> {
        let len = usize::from(self.raw_u8()?);
        self.text(len)
    }
    /// Read an array's length word and padding; returns the end offset of its elements.
    fn array_start(&mut self, elem_align: usize) -> Result<usize, WireError> {
        let len = self.raw_u32()? as usize;
        if len > MAX_ARRAY_LEN {
            return Err(WireError::BadBody("array too long"));
        }
        self.align(elem_align)?;
        let end = self.pos.checked_add(len).ok_or(SHORT)?;
        if end > self.body.len() {
            return Err(SHORT);
        }
        Ok(end)
    }
    fn array_finish(&self, end: usize) -> Result<(), WireError> {
        if self.pos != end {
            return Err(WireError::BadBody("array length mismatch"));
        }
        Ok(())
    }

    /// Read (when `keep`, returning it) or skip the complete type at `sig[*sp]`, advancing
    /// `*sp` past it. `depth` counts enclosing containers and is capped at `MAX_DEPTH`, which
    /// bounds the recursion whatever the input.
    fn walk(
        &mut self,
        sig: &'a [u8],
        sp: &mut usize,
        depth: u32,
        keep: bool,
    ) -> Result<Option<Value>, WireError> {
        let code = *sig.get(*sp).ok_or(WireError::BadBody("missing argument"))?;
        if matches!(code, b'a' | b'(' | b'{' | b'v') && depth >= MAX_DEPTH {
            return Err(WireError::BadBody("nesting too deep"));
        }
        let v = match code {
            b'y' => Value::Byte(self.raw_u8()?),
            b'b' => Value::Bool(self.raw_bool()?),
            b'n' => Value::I16(self.raw_u16()? as i16),
            b'q' => Value::U16(self.raw_u16()?),
            b'i' => Value::I32(self.raw_u32()? as i32),
            b'u' => Value::U32(self.raw_u32()?),
            b'h' => Value::Fd(self.raw_u32()?),
            b'x' => Value::I64(self.raw_u64()? as i64),
            b't' => Value::U64(self.raw_u64()?),
            b'd' => Value::Double(f64::from_bits(self.raw_u64()?)),
            b's' | b'o' => {
                let s = self.raw_str(code)?;
                if !keep {
                    Value::Byte(0)
                } else if code == b's' {
                    Value::Str(s.to_owned())
                } else {
                    Value::ObjectPath(s.to_owned())
                }
            }
            b'g' => {
                let s = self.raw_sig()?;
                if keep {
                    Value::Signature(s.to_owned())
                } else {
                    Value::Byte(0)
                }
            }
            b'a' => {
                let elem_start = *sp + 1;
                let elem_end = type_end(sig, elem_start)?;
                let bad = WireError::BadBody("invalid array signature");
                let elem = sig.get(elem_start..elem_end).ok_or(bad.clone())?;
                let first = *elem.first().ok_or(bad)?;
                let end = self.array_start(alignment(first))?;
                let v = if first == b'{' {
                    self.dict(elem, end, depth + 1, keep)?
                } else {
                    let mut items = Vec::new();
                    while self.pos < end {
                        let before = self.pos;
                        let mut esp = 0;
                        let item = self.walk(elem, &mut esp, depth + 1, keep)?;
                        // Every type occupies at least one byte; guard the loop anyway.
                        if self.pos == before {
                            return Err(WireError::BadBody("empty array element"));
                        }
                        if let Some(item) = item {
                            items.push(item);
                        }
                    }
                    if keep {
                        let es = std::str::from_utf8(elem).map_err(|_| MISMATCH)?;
                        Value::Array(es.to_owned(), items)
                    } else {
                        Value::Byte(0)
                    }
                };
                self.array_finish(end)?;
                *sp = elem_end;
                return Ok(keep.then_some(v));
            }
            b'(' => {
                self.align(8)?;
                *sp += 1;
                let mut fields = Vec::new();
                let mut n = 0usize;
                loop {
                    match sig.get(*sp) {
                        Some(b')') => break,
                        None => return Err(WireError::BadBody("unterminated struct")),
                        Some(_) => {
                            if let Some(f) = self.walk(sig, sp, depth + 1, keep)? {
                                fields.push(f);
                            }
                            n += 1;
                        }
                    }
                }
                if n == 0 {
                    return Err(WireError::BadBody("empty struct"));
                }
                *sp += 1;
                return Ok(keep.then_some(Value::Struct(fields)));
            }
            b'v' => {
                let vsig = self.raw_sig()?.as_bytes();
                let mut vsp = 0;
                let inner = self.walk(vsig, &mut vsp, depth + 1, keep)?;
                if vsp != vsig.len() {
                    return Err(WireError::BadBody("variant signature not one type"));
                }
                *sp += 1;
                return Ok(inner.map(|i| Value::Variant(Box::new(i))));
            }
            b'{' => return Err(WireError::BadBody("dict entry outside array")),
            _ => return Err(WireError::BadBody("invalid type code")),
        };
        *sp += 1;
        Ok(keep.then_some(v))
    }

    /// The entries of an array of dict entries whose element signature is `elem`
    /// (`{` key value `}`), ending at body offset `end`.
    fn dict(
        &mut self,
        elem: &'a [u8],
        end: usize,
        depth: u32,
        keep: bool,
    ) -> Result<Value, WireError> {
        let bad = WireError::BadBody("invalid dict entry signature");
        if depth >= MAX_DEPTH {
            return Err(WireError::BadBody("nesting too deep"));
        }
        // Shape: '{', one basic key, one complete value type, '}' and nothing more.
        let key = *elem.get(1).ok_or(bad.clone())?;
        if !is_basic(key) {
            return Err(bad);
        }
        let val_end = type_end(elem, 2)?;
        if elem.get(val_end) != Some(&b'}') || val_end + 1 != elem.len() {
            return Err(bad);
        }
        let mut entries = Vec::new();
        while self.pos < end {
            self.align(8)?;
            let mut esp = 1;
            let k = self.walk(elem, &mut esp, depth + 1, keep)?;
            let v = self.walk(elem, &mut esp, depth + 1, keep)?;
            if let (Some(k), Some(v)) = (k, v) {
                entries.push((k, v));
            }
        }
        if !keep {
            return Ok(Value::Byte(0));
        }
        let text = |b: &'a [u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| MISMATCH)
        };
        Ok(Value::Dict(
            text(elem.get(1..2).unwrap_or_default())?,
            text(elem.get(2..val_end).unwrap_or_default())?,
            entries,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(sig: &'static str, body: &'static [u8]) -> BodyReader<'static> {
        BodyReader::from_parts(Endian::Little, sig, body)
    }

    /// Write `v` at top level, check the tracked signature, read it back.
    fn round_trip(v: &Value) {
        let mut w = BodyWriter::new();
        w.value(v);
        assert_eq!(w.signature(), v.signature());
        let mut r = BodyReader::from_parts(Endian::Little, w.signature(), w.bytes());
        assert_eq!(r.value().as_ref(), Ok(v), "sig {}", w.signature());
        assert!(r.at_end());
        assert_eq!(r.offset(), w.bytes().len());
        // skip() walks the same extent without building anything.
        let mut r = BodyReader::from_parts(Endian::Little, w.signature(), w.bytes());
        r.skip().unwrap();
        assert_eq!(r.offset(), w.bytes().len());
        assert!(r.at_end());
    }

    #[test]
    fn encoded_headers_parse_with_every_field() {
        let header = Header {
            msg_type: message::SIGNAL,
            flags: message::flags::NO_REPLY_EXPECTED,
            serial: 9,
            path: Some("/a/b"),
            interface: Some("a.b"),
            member: Some("Mmm"),
            error_name: Some("a.Err"),
            reply_serial: Some(3),
            destination: Some(":1.12345"),
            sender: Some("org.freedesktop.DBus"),
            unix_fds: 0,
        };
        // Names of every length mod 8, so each field's padding is exercised.
        for name in [
            ":1.1",
            ":1.12",
            ":1.123",
            ":1.1234",
            ":1.12345",
            ":1.123456",
            ":1.1234567",
            ":1.12345678",
        ] {
            let mut w = BodyWriter::new();
            w.str(name);
            let h = Header {
                destination: Some(name),
                ..header
            };
            let general = BodyRef::Marshalled {
                sig: "s",
                bytes: w.bytes(),
            };
            let mut bytes = vec![0; h.encoded_len(general)];
            assert_eq!(h.encode(general, &mut bytes), bytes.len());
            // Too short a buffer: no panic, nothing past its end, the length all the same.
            let mut short = vec![0; bytes.len() - 1];
            assert_eq!(h.encode(general, &mut short), bytes.len());
            assert_eq!(short[..16], bytes[..16]);
            // A string body marshalled in place is the body writer's.
            assert_eq!(&encode_rc(h, BodyRef::Str(name))[..], &bytes[..], "{name}");
            let m = Message::parse(Rc::from(bytes), 0).expect("parses");
            assert_eq!(
                (
                    m.msg_type,
                    m.flags,
                    m.serial,
                    m.path(),
                    m.interface(),
                    m.member()
                ),
                (
                    message::SIGNAL,
                    message::flags::NO_REPLY_EXPECTED,
                    9,
                    Some("/a/b"),
                    Some("a.b"),
                    Some("Mmm")
                )
            );
            assert_eq!(
                (m.error_name(), m.reply_serial, m.destination()),
                (Some("a.Err"), Some(3), Some(name))
            );
            // The parser keeps no SENDER (the bus stamps its own): find it in the bytes.
            let sender = b"\x07\x01s\x00\x14\x00\x00\x00org.freedesktop.DBus\x00";
            assert!(m.data().windows(sender.len()).any(|w| w == sender));
            assert_eq!(m.signature(), "s");
            assert_eq!(BodyReader::new(&m).str(), Ok(name));
        }
        // No body, no SIGNATURE field; UNIX_FDS when declared.
        let h = Header {
            unix_fds: 2,
            ..header
        };
        let empty = BodyRef::Marshalled {
            sig: "",
            bytes: &[],
        };
        let m = Message::parse(encode_rc(h, empty), 2).expect("parses");
        assert_eq!((m.signature(), m.unix_fds), ("", 2));
    }

    fn sv(k: &str, v: Value) -> (Value, Value) {
        (Value::Str(k.into()), Value::Variant(Box::new(v)))
    }

    #[test]
    fn basic_writes_align_and_track_signature() {
        let mut w = BodyWriter::new();
        w.u8(7).u32(0x0102_0304).u8(8).u64(0x1122_3344_5566_7788);
        assert_eq!(w.signature(), "yuyt");
        assert_eq!(
            w.bytes(),
            [
                7, 0, 0, 0, 4, 3, 2, 1, 8, 0, 0, 0, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33,
                0x22, 0x11
            ]
        );
        let mut w = BodyWriter::new();
        w.u8(1)
            .bool(true)
            .i32(-2)
            .fd(3)
            .u8(2)
            .i16(-1)
            .u16(5)
            .i64(-1)
            .f64(1.0);
        assert_eq!(w.signature(), "ybihynqxd");
        assert_eq!(
            w.bytes(),
            [
                1, 0, 0, 0, 1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 3, 0, 0, 0, 2, 0, 0xff, 0xff, 5, 0,
                0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f
            ]
        );
    }

    #[test]
    fn strings_paths_signatures() {
        let mut w = BodyWriter::new();
        w.u8(9).str("ab").object_path("/").signature_value("a{sv}");
        assert_eq!(w.signature(), "ysog");
        assert_eq!(
            w.bytes(),
            [
                9, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 0, 0, 1, 0, 0, 0, b'/', 0, 5, b'a', b'{', b's',
                b'v', b'}', 0
            ]
        );
        let mut r = BodyReader::from_parts(Endian::Little, w.signature(), w.bytes());
        assert_eq!(r.value(), Ok(Value::Byte(9)));
        assert_eq!(r.str(), Ok("ab"));
        assert_eq!(r.str(), Ok("/"));
        assert_eq!(r.str(), Ok("a{sv}"));
        assert!(r.at_end());
        assert_eq!(r.str(), Err(WireError::BadBody("missing argument")));
    }

    #[test]
    fn containers_track_whole_type_only_at_top_level() {
        let mut w = BodyWriter::new();
        w.array("{sv}", |w| {
            w.dict_entry(|w| {
                w.str("k").variant("as", |w| {
                    w.str_array(["x"]);
                });
            });
        })
        .structure("su", |w| {
            w.str("a").u32(1);
        })
        .variant("(yy)", |w| {
            w.structure("yy", |w| {
                w.u8(1).u8(2);
            });
        })
        .byte_array(b"hi")
        .str_array(["p", "q"]);
        assert_eq!(w.signature(), "a{sv}(su)vayas");
        let mut r = BodyReader::from_parts(Endian::Little, w.signature(), w.bytes());
        assert_eq!(
            r.value(),
            Ok(Value::Dict(
                "s".into(),
                "v".into(),
                vec![sv(
                    "k",
                    Value::Array("s".into(), vec![Value::Str("x".into())])
                )]
            ))
        );
        assert_eq!(
            r.value(),
            Ok(Value::Struct(vec![Value::Str("a".into()), Value::U32(1)]))
        );
        assert_eq!(
            r.value(),
            Ok(Value::Variant(Box::new(Value::Struct(vec![
                Value::Byte(1),
                Value::Byte(2)
            ]))))
        );
        assert_eq!(
            r.value(),
            Ok(Value::Array(
                "y".into(),
                vec![Value::Byte(b'h'), Value::Byte(b'i')]
            ))
        );
        assert_eq!(r.str_array(), Ok(vec!["p", "q"]));
        assert!(r.at_end());
        assert_eq!(r.offset(), w.bytes().len());
    }

    #[test]
    fn empty_array_of_8_aligned_elements_keeps_padding() {
        let mut w = BodyWriter::new();
        w.array("(ii)", |_| {});
        // Length word 0, then padding to 8 even though there are no elements.
        assert_eq!(w.bytes(), [0; 8]);
        assert_eq!(w.signature(), "a(ii)");
        let mut r = BodyReader::from_parts(Endian::Little, "a(ii)", w.bytes());
        assert_eq!(r.value(), Ok(Value::Array("(ii)".into(), vec![])));
        assert_eq!(r.offset(), 8);

        let mut w = BodyWriter::new();
        w.u32(1).array("{sv}", |_| {}).u8(2);
        assert_eq!(w.bytes(), [1, 0, 0, 0, 0, 0, 0, 0, 2]);
        let v = Value::Struct(vec![
            Value::U32(1),
            Value::Dict("s".into(), "v".into(), vec![]),
            Value::Array("t".into(), vec![]),
            Value::Byte(2),
        ]);
        let mut w = BodyWriter::new();
        w.value(&v);
        // u32, empty a{sv} (no padding needed at 8), empty at (length 12..16), byte at 16.
        assert_eq!(
            w.bytes(),
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        round_trip(&v);
        // Without the padding the reader must refuse.
        let mut r = le("a(ii)", &[0, 0, 0, 0]);
        assert!(r.value().is_err());
    }

    #[test]
    fn round_trip_every_type() {
        let basics = [
            Value::Byte(0xfe),
            Value::Bool(true),
            Value::Bool(false),
            Value::I16(-300),
            Value::U16(65000),
            Value::I32(-7),
            Value::U32(0xdead_beef),
            Value::I64(i64::MIN),
            Value::U64(u64::MAX),
            Value::Double(-2.5),
            Value::Str("héllo".into()),
            Value::Str(String::new()),
            Value::ObjectPath("/org/freedesktop/DBus".into()),
            Value::Signature("a{sv}(ii)".into()),
            Value::Signature(String::new()),
            Value::Fd(2),
        ];
        for b in &basics {
            round_trip(b);
            round_trip(&Value::Variant(Box::new(b.clone())));
            round_trip(&Value::Array(b.signature(), vec![b.clone(), b.clone()]));
            round_trip(&Value::Struct(vec![Value::Byte(1), b.clone()]));
            round_trip(&Value::Dict(
                b.signature(),
                "v".into(),
                vec![(b.clone(), Value::Variant(Box::new(b.clone())))],
            ));
        }
        // Everything at once, each after a byte to exercise padding.
        let mut all = Vec::new();
        for b in &basics {
            all.push(Value::Byte(1));
            all.push(b.clone());
        }
        round_trip(&Value::Struct(all));
    }

    #[test]
    fn round_trip_nested_dict_with_variants() {
        let inner = Value::Dict(
            "s".into(),
            "v".into(),
            vec![
                sv("n", Value::U64(5)),
                sv(
                    "list",
                    Value::Array(
                        "(sx)".into(),
                        vec![
                            Value::Struct(vec![Value::Str("a".into()), Value::I64(-1)]),
                            Value::Struct(vec![Value::Str("bcd".into()), Value::I64(2)]),
                        ],
                    ),
                ),
            ],
        );
        let meta = Value::Dict(
            "s".into(),
            "v".into(),
            vec![
                sv("DesktopFile", Value::Str("x.desktop".into())),
                sv("Bytes", Value::Array("y".into(), vec![Value::Byte(1)])),
                sv("Empty", Value::Array("d".into(), vec![])),
                sv(
                    "Pair",
                    Value::Struct(vec![Value::Bool(true), Value::Double(0.5)]),
                ),
                sv("Nested", inner),
                sv("VV", Value::Variant(Box::new(Value::Byte(3)))),
                sv(
                    "IntKeys",
                    Value::Dict(
                        "u".into(),
                        "as".into(),
                        vec![(
                            Value::U32(1),
                            Value::Array("s".into(), vec![Value::Str("z".into())]),
                        )],
                    ),
                ),
            ],
        );
        assert_eq!(meta.signature(), "a{sv}");
        round_trip(&meta);
        round_trip(&Value::Struct(vec![
            Value::Str("t".into()),
            meta.clone(),
            Value::Byte(0),
            meta,
        ]));
    }

    #[test]
    fn value_signatures() {
        assert_eq!(Value::Byte(0).signature(), "y");
        assert_eq!(
            Value::Struct(vec![
                Value::U32(0),
                Value::Array("(ss)".into(), vec![]),
                Value::Variant(Box::new(Value::Bool(true))),
            ])
            .signature(),
            "(ua(ss)v)"
        );
        assert_eq!(
            Value::Dict("o".into(), "a{sv}".into(), vec![]).signature(),
            "a{oa{sv}}"
        );
        // The writer records the variant's contained type in the body, not the signature.
        let mut w = BodyWriter::new();
        w.value(&Value::Variant(Box::new(Value::Array("h".into(), vec![]))));
        assert_eq!(w.signature(), "v");
        assert_eq!(w.bytes(), [2, b'a', b'h', 0, 0, 0, 0, 0]);
    }

    #[test]
    fn typed_reads_check_the_signature() {
        let mut w = BodyWriter::new();
        w.str("name")
            .u32(4)
            .bool(true)
            .str_array(["a", "bb"])
            .array("{ss}", |w| {
                w.dict_entry(|w| {
                    w.str("k1").str("v1");
                })
                .dict_entry(|w| {
                    w.str("k2").str("");
                });
            });
        assert_eq!(w.signature(), "subasa{ss}");
        let mut r = BodyReader::from_parts(Endian::Little, w.signature(), w.bytes());
        assert_eq!(r.u32(), Err(MISMATCH));
        assert_eq!(r.bool(), Err(MISMATCH));
        assert_eq!(r.str_array(), Err(MISMATCH));
        assert_eq!(r.str_str_dict(), Err(MISMATCH));
        assert_eq!(r.offset(), 0, "failed reads do not move");
        assert_eq!(r.str(), Ok("name"));
        assert_eq!(r.str(), Err(MISMATCH));
        assert_eq!(r.u32(), Ok(4));
        assert_eq!(r.u32(), Err(MISMATCH));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.str_str_dict(), Err(MISMATCH));
        assert_eq!(r.str_array(), Ok(vec!["a", "bb"]));
        assert_eq!(r.str_array(), Err(MISMATCH));
        assert_eq!(r.str_str_dict(), Ok(vec![("k1", "v1"), ("k2", "")]));
        assert!(r.at_end());
        let missing = Some(WireError::BadBody("missing argument"));
        assert_eq!(r.u32().err(), missing);
        assert_eq!(r.bool().err(), missing);
        assert_eq!(r.value().err(), missing);
        assert_eq!(r.str_array().err(), missing);
        assert_eq!(r.str_str_dict().err(), missing);
        assert_eq!(r.skip().err(), missing);

        // str() accepts object paths and signatures; str_array() arrays of them.
        let mut w = BodyWriter::new();
        w.object_path("/a")
            .signature_value("u")
            .array("o", |w| {
                w.object_path("/b");
            })
            .array("g", |w| {
                w.signature_value("s").signature_value("");
            });
        let mut r = BodyReader::from_parts(Endian::Little, w.signature(), w.bytes());
        assert_eq!(r.str(), Ok("/a"));
        assert_eq!(r.str(), Ok("u"));
        assert_eq!(r.str_array(), Ok(vec!["/b"]));
        assert_eq!(r.str_array(), Ok(vec!["s", ""]));
        // An empty a{ss}.
        let mut r = le("a{ss}", &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.str_str_dict(), Ok(vec![]));
        // a{sv} is not a{ss}.
        let mut r = le("a{sv}", &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.str_str_dict(), Err(MISMATCH));
    }

    #[test]
    fn skip_then_read() {
        let mut w = BodyWriter::new();
        w.value(&Value::Dict(
            "s".into(),
            "v".into(),
            vec![sv("a", Value::U16(1))],
        ))
        .str("after");
        let mut r = BodyReader::from_parts(Endian::Little, w.signature(), w.bytes());
        let mut probe = r.clone();
        probe.skip().unwrap();
        let size = probe.offset();
        // Length word, pad to 8, key "a", variant signature "q", pad to 2, u16.
        assert_eq!(size, 4 + 4 + 6 + 3 + 1 + 2);
        r.skip().unwrap();
        assert_eq!(r.offset(), size);
        assert_eq!(r.str(), Ok("after"));
    }

    #[test]
    fn big_endian_input() {
        // "ua{sv}(yb)" by hand: u32; array length 16, padding to 8, one entry {"k": <u 7>};
        // struct at 24: byte 9, padding, boolean true.
        const BE: &[u8] = &[
            1, 2, 3, 4, /* len */ 0, 0, 0, 16, /* key */ 0, 0, 0, 1, b'k', 0,
            /* variant sig */ 1, b'u', 0, /* pad */ 0, 0, 0, /* u32 */ 0, 0, 0, 7,
            /* struct */ 9, 0, 0, 0, 0, 0, 0, 1,
        ];
        let expect = [
            Value::U32(0x0102_0304),
            Value::Dict("s".into(), "v".into(), vec![sv("k", Value::U32(7))]),
            Value::Struct(vec![Value::Byte(9), Value::Bool(true)]),
        ];
        let mut r = BodyReader::from_parts(Endian::Big, "ua{sv}(yb)", BE);
        for e in &expect {
            assert_eq!(r.value().as_ref(), Ok(e));
        }
        assert_eq!(r.offset(), BE.len());
        let mut r = BodyReader::from_parts(Endian::Big, "ua{sv}(yb)", BE);
        assert_eq!(r.u32(), Ok(0x0102_0304));

        // The writer produces the little-endian twin of the same body.
        let mut w = BodyWriter::new();
        for e in &expect {
            w.value(e);
        }
        assert_eq!(w.signature(), "ua{sv}(yb)");
        assert_eq!(
            w.bytes(),
            [
                4, 3, 2, 1, 16, 0, 0, 0, 1, 0, 0, 0, b'k', 0, 1, b'u', 0, 0, 0, 0, 7, 0, 0, 0, 9,
                0, 0, 0, 1, 0, 0, 0
            ]
        );

        // Big-endian strings, 16- and 64-bit values.
        const BE2: &[u8] = &[
            0, 0, 0, 2, b'h', b'i', 0, 0, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2,
        ];
        let mut r = BodyReader::from_parts(Endian::Big, "snt", BE2);
        assert_eq!(r.str(), Ok("hi"));
        assert_eq!(r.value(), Ok(Value::I16(-2)));
        assert_eq!(r.value(), Ok(Value::U64(0x102)));
        assert!(r.at_end());
    }

    #[test]
    fn bad_bodies_are_errors() {
        let bad = |sig: &'static str, body: &'static [u8]| {
            let mut r = le(sig, body);
            let e = r.value();
            assert!(
                matches!(e, Err(WireError::BadBody(_))),
                "{sig} {body:?}: {e:?}"
            );
            assert_eq!(r.offset(), 0);
            let mut r = le(sig, body);
            assert!(r.skip().is_err(), "skip {sig} {body:?}");
        };
        bad("u", &[1, 0, 0]); // truncated
        bad("t", &[0; 4]);
        bad("(yt)", &[1, 0, 0, 0, 0, 0, 0, 0, 0]); // u64 needs padding to 8 first
        bad("b", &[2, 0, 0, 0]); // boolean not 0/1
        bad("s", &[2, 0, 0, 0, b'a', b'b', 1]); // not NUL-terminated
        bad("s", &[2, 0, 0, 0, b'a', 0, 0]); // interior NUL
        bad("s", &[1, 0, 0, 0, 0xff, 0]); // invalid UTF-8
        bad("s", &[0xff, 0xff, 0xff, 0xff, 0]); // length past the end
        bad("o", &[2, 0, 0, 0, b'/', b'/', 0]); // bad object path
        bad("g", &[3, b'a', 0]);
        bad("ay", &[0, 0, 0, 5, 1]); // array longer than 64 MiB
        bad("ay", &[3, 0, 0, 0, 1, 2]); // past the end
        bad("au", &[6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]); // not an element boundary
        bad("v", &[2, b'y', b'y', 0, 1, 2]); // two types in a variant
        bad("v", &[0, 0]); // empty variant signature
        bad("v", &[1, b'r', 0, 0]); // reserved code
        bad("v", &[1, b'{', 0, 0]);
        bad("v", &[2, b'a', b'{', 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        bad("a{vs}", &[0; 8]); // non-basic dict key
        bad("a{sss}", &[0; 8]);
        bad("a{s}", &[0; 8]);
        bad("()", &[0; 8]);
        bad("(y", &[0; 8]);
        bad("a", &[0; 8]);
        bad("{sv}", &[0; 8]);
        bad("z", &[0; 8]);
        bad("a)", &[0; 8]);
        // Type mismatch for the typed readers, and the position is kept.
        let mut r = le("i", &[1, 0, 0, 0]);
        assert_eq!(r.u32(), Err(MISMATCH));
        assert_eq!(r.value(), Ok(Value::I32(1)));
    }

    #[test]
    fn nesting_is_capped() {
        // `n` nested variants around one byte: only 64 levels are followed.
        fn nested(n: usize) -> Vec<u8> {
            let mut b = Vec::new();
            for _ in 1..n {
                b.extend_from_slice(&[1, b'v', 0]);
            }
            b.extend_from_slice(&[1, b'y', 0, 42]);
            b
        }
        let ok = nested(64);
        let mut r = BodyReader::from_parts(Endian::Little, "v", &ok);
        let mut v = r.value().unwrap();
        let mut levels = 0;
        while let Value::Variant(inner) = v {
            v = *inner;
            levels += 1;
        }
        assert_eq!((levels, v), (64, Value::Byte(42)));
        let deep = nested(65);
        let mut r = BodyReader::from_parts(Endian::Little, "v", &deep);
        assert_eq!(r.value(), Err(WireError::BadBody("nesting too deep")));
        let mut r = BodyReader::from_parts(Endian::Little, "v", &deep);
        assert_eq!(r.skip(), Err(WireError::BadBody("nesting too deep")));
        // Deeply nested arrays in the signature: an empty outer array is fine, a full one
        // stops at the cap.
        let sig = format!("{}y", "a".repeat(100));
        let mut r = BodyReader::from_parts(Endian::Little, &sig, &[0, 0, 0, 0]);
        assert!(r.value().is_ok());
        let mut body = vec![4, 0, 0, 0];
        for _ in 0..100 {
            body.extend_from_slice(&[4, 0, 0, 0]);
        }
        let mut r = BodyReader::from_parts(Endian::Little, &sig, &body);
        assert_eq!(r.value(), Err(WireError::BadBody("nesting too deep")));
        // A huge unbalanced signature does not blow the stack either.
        let sig = "(".repeat(10_000);
        let mut r = BodyReader::from_parts(Endian::Little, &sig, &[0; 8]);
        assert!(r.value().is_err());
    }

    #[test]
    fn built_method_return_matches_hand_derived_bytes() {
        let mut body = BodyWriter::new();
        body.str("hi");
        let msg = MessageBuilder::method_return(5)
            .destination(":1.7")
            .build(3, &body);
        #[rustfmt::skip]
        let expect: &[u8] = &[
            b'l', 2, 1, 1,            // LE, METHOD_RETURN, NO_REPLY_EXPECTED, version 1
            7, 0, 0, 0,               // body length
            3, 0, 0, 0,               // serial
            31, 0, 0, 0,              // header fields length (16..47)
            5, 1, b'u', 0, 5, 0, 0, 0, // REPLY_SERIAL <u 5>
            6, 1, b's', 0, 4, 0, 0, 0, b':', b'1', b'.', b'7', 0, // DESTINATION <s ":1.7">
            0, 0, 0,                  // pad to 40
            8, 1, b'g', 0, 1, b's', 0, // SIGNATURE <g "s">
            0,                        // header padding to 48
            2, 0, 0, 0, b'h', b'i', 0, // body
        ];
        assert_eq!(msg, expect);
    }

    /// Decode a built message's header with the reader (alignment is from offset 0, as for a
    /// body), returning (fixed values, fields, body).
    fn decode(msg: &[u8]) -> (Vec<Value>, Vec<(u8, Value)>, &[u8]) {
        let mut r = BodyReader::from_parts(Endian::Little, "yyyyuua(yv)", msg);
        let fixed: Vec<Value> = (0..6).map(|_| r.value().unwrap()).collect();
        let Value::Array(_, fields) = r.value().unwrap() else {
            panic!("no fields")
        };
        let fields = fields
            .into_iter()
            .map(|f| match f {
                Value::Struct(mut kv) => {
                    let v = kv.pop().unwrap();
                    let Some(Value::Byte(code)) = kv.pop() else {
                        panic!()
                    };
                    let Value::Variant(v) = v else { panic!() };
                    (code, *v)
                }
                _ => panic!(),
            })
            .collect();
        let body_at = align(r.offset(), 8);
        assert!(msg[r.offset()..body_at].iter().all(|&b| b == 0));
        (fixed, fields, &msg[body_at..])
    }

    #[test]
    fn builders_set_the_right_fields() {
        let empty = BodyWriter::new();
        let m = MessageBuilder::signal("/org/freedesktop/DBus", "org.freedesktop.DBus", "X")
            .build(1, &empty);
        let (fixed, fields, body) = decode(&m);
        assert_eq!(
            fixed,
            [
                Value::Byte(b'l'),
                Value::Byte(4),
                Value::Byte(1),
                Value::Byte(1),
                Value::U32(0),
                Value::U32(1)
            ]
        );
        assert_eq!(
            fields,
            [
                (1, Value::ObjectPath("/org/freedesktop/DBus".into())),
                (2, Value::Str("org.freedesktop.DBus".into())),
                (3, Value::Str("X".into())),
            ]
        );
        assert!(body.is_empty());
        assert_eq!(m.len() % 8, 0);

        let mut b = BodyWriter::new();
        b.str("oops").u32(2);
        let m = MessageBuilder::error("org.freedesktop.DBus.Error.Failed", 9)
            .destination(":1.1")
            .sender("org.freedesktop.DBus")
            .unix_fds(2)
            .flags(0)
            .build(77, &b);
        let (fixed, fields, body) = decode(&m);
        assert_eq!(
            fixed[1..],
            [
                Value::Byte(3),
                Value::Byte(0),
                Value::Byte(1),
                Value::U32(b.bytes().len() as u32),
                Value::U32(77)
            ]
        );
        assert_eq!(
            fields,
            [
                (4, Value::Str("org.freedesktop.DBus.Error.Failed".into())),
                (5, Value::U32(9)),
                (6, Value::Str(":1.1".into())),
                (7, Value::Str("org.freedesktop.DBus".into())),
                (8, Value::Signature("su".into())),
                (9, Value::U32(2)),
            ]
        );
        assert_eq!(body, b.bytes());
        let mut r = BodyReader::from_parts(Endian::Little, "su", body);
        assert_eq!((r.str(), r.u32()), (Ok("oops"), Ok(2)));

        let m = MessageBuilder::method_call("/", None, "Ping").build(2, &empty);
        let (fixed, fields, _) = decode(&m);
        assert_eq!(fixed[1], Value::Byte(1));
        assert_eq!(
            fields,
            [
                (1, Value::ObjectPath("/".into())),
                (3, Value::Str("Ping".into()))
            ]
        );
        let m = MessageBuilder::method_call("/a", Some("x.Y"), "Z").build(2, &empty);
        assert_eq!(decode(&m).1[1], (2, Value::Str("x.Y".into())));

        // No body: no SIGNATURE field.
        let m = MessageBuilder::method_return(1).build(1, &empty);
        assert_eq!(decode(&m).1, [(5, Value::U32(1))]);
        // Body bytes without a tracked signature (a stray top-level dict entry) still get a
        // SIGNATURE field, so the mismatch is visible rather than silently dropped.
        let mut odd = BodyWriter::new();
        odd.dict_entry(|w| {
            w.u8(1);
        });
        assert_eq!((odd.signature(), odd.bytes()), ("", &[1u8][..]));
        let m = MessageBuilder::method_return(1).build(1, &odd);
        assert_eq!(
            decode(&m).1,
            [(5, Value::U32(1)), (8, Value::Signature(String::new()))]
        );
    }
}
