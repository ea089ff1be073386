//! Body validation: one pass over the body against its signature, without copying.

use super::names::object_path_bytes;
use super::signature::{is_single_complete_type, is_valid_signature, type_end};
use super::{align, Endian, WireError};
use arrayvec::ArrayVec;

/// Maximum byte length of one array's payload (2^26).
pub const MAX_ARRAY_LEN: usize = 1 << 26;

/// Maximum number of containers (arrays, structs, dict entries, variants) around a value.
pub const MAX_TOTAL_DEPTH: usize = 64;

/// Reason text for a failed check; the caller picks the `WireError` variant.
pub(crate) type Why = &'static str;

/// Bounds-checked reader over a buffer whose offset 0 is 8-aligned in the message.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    /// The bytes being read (message prefix or body).
    pub buf: &'a [u8],
    /// Current offset.
    pub pos: usize,
    /// Byte order for integers.
    pub endian: Endian,
}

impl<'a> Cursor<'a> {
    /// Reader at `pos` in `buf`.
    pub fn new(endian: Endian, buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos, endian }
    }

    /// Skip to the next multiple of `a`; the skipped bytes must exist and be zero.
    #[inline]
    pub fn pad(&mut self, a: usize) -> Result<(), Why> {
        let end = align(self.pos, a);
        zero_padding(self.buf, self.pos, end)?;
        self.pos = end;
        Ok(())
    }

    /// The next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Why> {
        let end = self.pos.checked_add(n).ok_or("truncated")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }

    /// One byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, Why> {
        let b = *self.buf.get(self.pos).ok_or("truncated")?;
        self.pos += 1;
        Ok(b)
    }

    /// A u32 at the current (already aligned) offset.
    #[inline]
    pub fn u32(&mut self) -> Result<u32, Why> {
        let b = self.take(4)?;
        let w: [u8; 4] = b.try_into().map_err(|_| "truncated")?;
        Ok(self.endian.u32(w))
    }

    /// Padding to 4, then a u32.
    #[inline]
    pub fn aligned_u32(&mut self) -> Result<u32, Why> {
        self.pad(4)?;
        self.u32()
    }

    /// A STRING/OBJECT_PATH's raw bytes (without the NUL, which is checked). Content is not
    /// checked.
    // Inlined: once per string header field and body argument.
    #[inline(always)]
    pub fn string(&mut self) -> Result<&'a [u8], Why> {
        // The same checks, in the same order, as pad(4), u32(), take(len), u8(), with one
        // bounds check per region.
        let p = align(self.pos, 4);
        zero_padding(self.buf, self.pos, p)?;
        let w: [u8; 4] = self
            .buf
            .get(p..p + 4)
            .and_then(|w| w.try_into().ok())
            .ok_or("truncated")?;
        let start = p + 4;
        let end = start
            .checked_add(self.endian.u32(w) as usize)
            .ok_or("truncated")?;
        let (s, nul) = match (self.buf.get(start..end), self.buf.get(end)) {
            (Some(s), Some(&nul)) => (s, nul),
            _ => return Err("truncated"),
        };
        if nul != 0 {
            return Err("string not NUL-terminated");
        }
        self.pos = end + 1;
        Ok(s)
    }

    /// A SIGNATURE's raw bytes (without the NUL, which is checked). Content is not checked.
    #[inline]
    pub fn sig(&mut self) -> Result<&'a [u8], Why> {
        let len = self.u8()? as usize;
        let s = self.take(len)?;
        if self.u8()? != 0 {
            return Err("signature not NUL-terminated");
        }
        Ok(s)
    }
}

/// Checks that `buf[pos..end]`, padding of fewer than 8 bytes, exists and is zero. When
/// an 8-byte word ends at `end` (always, past a message's fixed header) the padding is its
/// last bytes, tested with one load and one shift instead of a loop over the bytes: header
/// fields are padded to 8 once each, in every message.
#[inline(always)]
fn zero_padding(buf: &[u8], pos: usize, end: usize) -> Result<(), Why> {
    let n = end - pos;
    if n == 0 {
        return Ok(());
    }
    let word = end
        .checked_sub(8)
        .and_then(|start| buf.get(start..end))
        .and_then(|w| <[u8; 8]>::try_from(w).ok());
    let zero = match word {
        // Little-endian load: the word's last `n` bytes are its top `8 n` bits (n < 8).
        Some(w) => u64::from_le_bytes(w) >> (64 - 8 * n) == 0,
        None => buf
            .get(pos..end)
            .ok_or("truncated")?
            .iter()
            .all(|&b| b == 0),
    };
    if zero {
        Ok(())
    } else {
        Err("non-zero padding")
    }
}

/// Alignment of a type code (unknown codes get 1; they are rejected elsewhere).
#[inline]
pub(crate) fn alignment(t: u8) -> usize {
    match t {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

/// Size of a fixed-size type whose every bit pattern is valid (`None` otherwise).
#[inline]
fn plain_size(t: u8) -> Option<usize> {
    match t {
        b'y' => Some(1),
        b'n' | b'q' => Some(2),
        // A UNIX_FD's index is the receiver's business (see `validate_values`).
        b'i' | b'u' | b'h' => Some(4),
        b'x' | b't' | b'd' => Some(8),
        _ => None,
    }
}

/// Whether `b` is ASCII without NUL (every byte in 1..=0x7F), eight bytes at a time.
#[inline]
fn ascii_without_nul(b: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut words = b.chunks_exact(8);
    let mut bad = 0u64;
    for w in &mut words {
        let Ok(w) = <[u8; 8]>::try_from(w) else {
            return false;
        };
        let w = u64::from_le_bytes(w);
        // A byte >= 0x80 sets its own high bit in `w`; a zero byte borrows and sets it in
        // `w - LO`. Without either, no byte borrows, so no false positives.
        bad |= (w.wrapping_sub(LO) | w) & HI;
    }
    bad == 0 && words.remainder().iter().all(|&c| c.wrapping_sub(1) < 0x7F)
}

/// Strict UTF-8 (std rejects overlongs, surrogates and > U+10FFFF) without interior NUL.
/// ASCII, the common case, is proven by [`ascii_without_nul`] alone; anything else goes
/// through `std::str::from_utf8`, so the accepted set is exactly std's minus NUL.
#[inline]
pub(crate) fn check_str(b: &[u8]) -> Result<(), Why> {
    if ascii_without_nul(b) {
        return Ok(());
    }
    std::str::from_utf8(b).map_err(|_| "invalid UTF-8")?;
    if b.contains(&0) {
        return Err("NUL inside string");
    }
    Ok(())
}

/// An open container while walking a body.
#[derive(Clone, Copy)]
enum Frame<'a> {
    /// Struct or dict entry: closes when the signature reaches `)` or `}`.
    Struct,
    /// Array whose element type is `sig[elem..elem_end]`, payload ending at body offset `end`.
    Array {
        elem: usize,
        elem_end: usize,
        end: usize,
    },
    /// Variant: its own signature is current; resume `sig` at `sp` when it is done.
    Variant { sig: &'a [u8], sp: usize },
}

/// Validate the values of all complete types in `sig`, consecutively from `pos` in `buf`,
/// with `base_depth` containers already open around them. Returns the offset after the last
/// value. `sig` should be valid; an invalid one yields an error, never a panic or a hang.
///
/// A UNIX_FD value is not checked against the fds the message carries: the D-Bus
/// specification (Basic types) defines it only as an index into the message's fds, and
/// dbus-daemon's validator accepts any index, leaving a bad one for the receiver to refuse.
pub(crate) fn validate_values<'a>(
    endian: Endian,
    sig: &'a [u8],
    buf: &'a [u8],
    pos: usize,
    base_depth: usize,
) -> Result<usize, Why> {
    let mut stack: ArrayVec<Frame<'a>, MAX_TOTAL_DEPTH> = ArrayVec::new();
    let mut sig = sig;
    let mut sp = 0usize;
    let mut c = Cursor::new(endian, buf, pos);
    loop {
        // Close finished containers (possibly several) before reading the next type code.
        loop {
            match stack.last() {
                None => {
                    if sp >= sig.len() {
                        return Ok(c.pos);
                    }
                    break;
                }
                Some(Frame::Struct) => match sig.get(sp) {
                    Some(b')' | b'}') => {
                        sp += 1;
                        stack.pop();
                    }
                    _ => break,
                },
                Some(&Frame::Array {
                    elem,
                    elem_end,
                    end,
                }) => {
                    if sp != elem_end {
                        break;
                    }
                    if c.pos == end {
                        stack.pop();
                    } else if c.pos > end {
                        return Err("array length does not end on an element boundary");
                    } else {
                        sp = elem;
                        break;
                    }
                }
                Some(&Frame::Variant {
                    sig: outer,
                    sp: outer_sp,
                }) => {
                    if sp < sig.len() {
                        break;
                    }
                    sig = outer;
                    sp = outer_sp;
                    stack.pop();
                }
            }
        }
        let depth = base_depth + stack.len();
        let t = *sig.get(sp).ok_or("signature ended inside a container")?;
        sp += 1;
        match t {
            b'y' => {
                c.u8()?;
            }
            b'b' => {
                if c.aligned_u32()? > 1 {
                    return Err("boolean not 0 or 1");
                }
            }
            b'n' | b'q' | b'i' | b'u' | b'h' | b'x' | b't' | b'd' => {
                let n = plain_size(t).unwrap_or(1);
                c.pad(n)?;
                c.take(n)?;
            }
            b's' => {
                check_str(c.string()?)?;
            }
            b'o' => {
                // The path grammar admits ASCII only, so it checks UTF-8 and NUL too; but
                // keep the string's own error first, as before.
                let b = c.string()?;
                if !object_path_bytes(b) {
                    check_str(b)?;
                    return Err("invalid object path");
                }
            }
            b'g' => {
                if !is_valid_signature(c.sig()?) {
                    return Err("invalid signature value");
                }
            }
            b'a' => {
                if depth >= MAX_TOTAL_DEPTH {
                    return Err("nested too deeply");
                }
                let len = c.aligned_u32()? as usize;
                if len > MAX_ARRAY_LEN {
                    return Err("array longer than 64 MiB");
                }
                let et = *sig.get(sp).ok_or("array without element type")?;
                // Padding to the element alignment is present even when the array is empty.
                c.pad(alignment(et))?;
                let end = c.pos.checked_add(len).ok_or("truncated")?;
                if end > buf.len() {
                    return Err("truncated");
                }
                if let Some(size) = plain_size(et) {
                    // Every bit pattern is valid: only the length needs checking.
                    if len % size != 0 {
                        return Err("array length does not end on an element boundary");
                    }
                    c.pos = end;
                    sp += 1;
                } else if et == b'b' {
                    if len % 4 != 0 {
                        return Err("array length does not end on an element boundary");
                    }
                    for w in c.take(len)?.chunks_exact(4) {
                        let w: [u8; 4] = w.try_into().map_err(|_| "truncated")?;
                        if endian.u32(w) > 1 {
                            return Err("boolean not 0 or 1");
                        }
                    }
                    sp += 1;
                } else {
                    // Measured from the `a`, since a dict entry alone is not a complete type.
                    let elem_end = type_end(sig, sp - 1).ok_or("invalid array element type")?;
                    if len == 0 {
                        sp = elem_end;
                    } else {
                        stack
                            .try_push(Frame::Array {
                                elem: sp,
                                elem_end,
                                end,
                            })
                            .map_err(|_| "nested too deeply")?;
                    }
                }
            }
            b'(' | b'{' => {
                if depth >= MAX_TOTAL_DEPTH {
                    return Err("nested too deeply");
                }
                c.pad(8)?;
                stack
                    .try_push(Frame::Struct)
                    .map_err(|_| "nested too deeply")?;
            }
            b'v' => {
                if depth >= MAX_TOTAL_DEPTH {
                    return Err("nested too deeply");
                }
                let vsig = c.sig()?;
                if !is_single_complete_type(vsig) {
                    return Err("variant signature is not a single complete type");
                }
                stack
                    .try_push(Frame::Variant { sig, sp })
                    .map_err(|_| "nested too deeply")?;
                sig = vsig;
                sp = 0;
            }
            _ => return Err("invalid type code in signature"),
        }
    }
}

/// Skip one complete value of type `sig[sp..]` at `pos` in an already validated `buf`.
/// Returns the signature index and buffer offset after it; `None` on inconsistent input.
/// Arrays are skipped by their length word, so this is cheap for match-rule `argN` lookups.
pub(crate) fn skip_value(
    endian: Endian,
    sig: &[u8],
    sp: usize,
    buf: &[u8],
    pos: usize,
    depth: usize,
) -> Option<(usize, usize)> {
    if depth > MAX_TOTAL_DEPTH {
        return None;
    }
    let mut c = Cursor::new(endian, buf, pos);
    let t = *sig.get(sp)?;
    match t {
        b'y' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' => {
            let n = plain_size(t)?;
            c.pad(n).ok()?;
            c.take(n).ok()?;
        }
        b'b' | b'h' => {
            c.aligned_u32().ok()?;
        }
        b's' | b'o' => {
            c.string().ok()?;
        }
        b'g' => {
            c.sig().ok()?;
        }
        b'a' => {
            let len = c.aligned_u32().ok()? as usize;
            c.pad(alignment(*sig.get(sp + 1)?)).ok()?;
            c.take(len).ok()?;
            return Some((type_end(sig, sp)?, c.pos));
        }
        b'(' | b'{' => {
            c.pad(8).ok()?;
            let (mut i, mut p) = (sp + 1, c.pos);
            loop {
                match *sig.get(i)? {
                    b')' | b'}' => return Some((i + 1, p)),
                    _ => (i, p) = skip_value(endian, sig, i, buf, p, depth + 1)?,
                }
            }
        }
        b'v' => {
            let vsig = c.sig().ok()?;
            let (_, p) = skip_value(endian, vsig, 0, buf, c.pos, depth + 1)?;
            return Some((sp + 1, p));
        }
        _ => return None,
    }
    Some((sp + 1, c.pos))
}

/// Read the STRING or OBJECT_PATH at `pos` of a validated buffer.
pub(crate) fn read_str(endian: Endian, buf: &[u8], pos: usize) -> Option<&str> {
    let mut c = Cursor::new(endian, buf, pos);
    std::str::from_utf8(c.string().ok()?).ok()
}

/// The body's leading top-level values of the most common kinds (fixed-size basic types,
/// strings, arrays of fixed-size basic types) in a flat loop, with exactly the checks and
/// error texts of [`validate_values`], which gets the rest of the signature (from a
/// top-level type boundary, so still valid) at the offset reached.
#[inline]
fn validate_top(endian: Endian, sig: &[u8], buf: &[u8]) -> Result<usize, Why> {
    let mut c = Cursor::new(endian, buf, 0);
    let mut sp = 0;
    while let Some(&t) = sig.get(sp) {
        if t == b's' {
            check_str(c.string()?)?;
            sp += 1;
        } else if let Some(n) = plain_size(t) {
            c.pad(n)?;
            c.take(n)?;
            sp += 1;
        } else if let (b'a', Some(size)) = (t, sig.get(sp + 1).and_then(|&e| plain_size(e))) {
            top_fixed_array(&mut c, size)?;
            sp += 2;
        } else {
            return validate_values(endian, sig.get(sp..).unwrap_or(&[]), buf, c.pos, 0);
        }
    }
    Ok(c.pos)
}

/// A top-level array of a fixed-size basic type of `size` bytes (every bit pattern valid),
/// at `c`: only its length needs checking. At the top level no depth limit can be reached.
#[inline(always)]
fn top_fixed_array(c: &mut Cursor<'_>, size: usize) -> Result<(), Why> {
    let len = c.aligned_u32()? as usize;
    if len > MAX_ARRAY_LEN {
        return Err("array longer than 64 MiB");
    }
    // A fixed-size basic type's alignment is its size.
    c.pad(size)?;
    let end = c.pos.checked_add(len).ok_or("truncated")?;
    if end > c.buf.len() {
        return Err("truncated");
    }
    if len % size != 0 {
        return Err("array length does not end on an element boundary");
    }
    c.pos = end;
    Ok(())
}

/// [`validate_top`] kept out of line, so that the short bodies [`validate_body`] handles
/// itself do not pay for its set-up.
#[inline(never)]
fn validate_top_outlined(endian: Endian, sig: &[u8], buf: &[u8]) -> Result<usize, Why> {
    validate_top(endian, sig, buf)
}

/// The end of `body` validated against `sig`: the most common short signatures (none, one
/// string, one array of a fixed-size type) inline, with the very checks [`validate_top`]
/// makes for them, the others through it.
#[inline(always)]
fn validate_short(endian: Endian, sig: &[u8], body: &[u8]) -> Result<usize, Why> {
    let mut c = Cursor::new(endian, body, 0);
    match *sig {
        [] => {}
        [b's'] => check_str(c.string()?)?,
        [b'a', e] => match plain_size(e) {
            Some(size) => top_fixed_array(&mut c, size)?,
            None => return validate_top_outlined(endian, sig, body),
        },
        _ => return validate_top_outlined(endian, sig, body),
    }
    Ok(c.pos)
}

/// Validate `body` against `signature` (already known valid): alignment padding zero,
/// strings valid UTF-8 without interior NUL, object paths and signatures valid, booleans 0/1,
/// array lengths within 64 MiB and ending on an element boundary, variants holding exactly
/// one complete type, total depth <= 64, no trailing bytes. UNIX_FD indexes are not
/// checked (see `validate_values`). Offsets are relative to the body start, which is
/// 8-aligned in the message.
#[inline]
pub fn validate_body(endian: Endian, signature: &[u8], body: &[u8]) -> Result<(), WireError> {
    let end = validate_short(endian, signature, body).map_err(WireError::BadBody)?;
    if end != body.len() {
        return Err(WireError::BadBody("trailing bytes after the last argument"));
    }
    Ok(())
}

/// A tiny marshaller for tests, in either byte order.
#[cfg(test)]
pub(crate) mod testw {
    use crate::wire::{align, Endian};

    /// Writes values with alignment relative to the buffer start.
    pub struct W {
        pub buf: Vec<u8>,
        pub e: Endian,
    }

    impl W {
        pub fn new(e: Endian) -> W {
            W { buf: Vec::new(), e }
        }
        pub fn pad(&mut self, a: usize) -> &mut Self {
            let n = align(self.buf.len(), a);
            self.buf.resize(n, 0);
            self
        }
        pub fn y(&mut self, v: u8) -> &mut Self {
            self.buf.push(v);
            self
        }
        pub fn u16(&mut self, v: u16) -> &mut Self {
            self.pad(2);
            let b = match self.e {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            };
            self.buf.extend_from_slice(&b);
            self
        }
        pub fn u32(&mut self, v: u32) -> &mut Self {
            self.pad(4);
            let b = self.e.put_u32(v);
            self.buf.extend_from_slice(&b);
            self
        }
        pub fn u64(&mut self, v: u64) -> &mut Self {
            self.pad(8);
            let b = match self.e {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            };
            self.buf.extend_from_slice(&b);
            self
        }
        /// STRING / OBJECT_PATH from raw bytes (may be invalid on purpose).
        pub fn sb(&mut self, v: &[u8]) -> &mut Self {
            self.u32(v.len() as u32);
            self.buf.extend_from_slice(v);
            self.buf.push(0);
            self
        }
        pub fn s(&mut self, v: &str) -> &mut Self {
            self.sb(v.as_bytes())
        }
        /// SIGNATURE
        pub fn g(&mut self, v: &str) -> &mut Self {
            self.buf.push(v.len() as u8);
            self.buf.extend_from_slice(v.as_bytes());
            self.buf.push(0);
            self
        }
        /// ARRAY: length word, padding to `elem_align`, then `f`'s elements.
        pub fn array(&mut self, elem_align: usize, f: impl FnOnce(&mut W)) -> &mut Self {
            self.u32(0);
            let len_at = self.buf.len() - 4;
            self.pad(elem_align);
            let start = self.buf.len();
            f(self);
            let len = (self.buf.len() - start) as u32;
            let b = self.e.put_u32(len);
            self.buf[len_at..len_at + 4].copy_from_slice(&b);
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testw::W;
    use super::*;

    const BOTH: [Endian; 2] = [Endian::Little, Endian::Big];

    fn check(e: Endian, sig: &str, f: impl FnOnce(&mut W)) -> Result<(), WireError> {
        let mut w = W::new(e);
        f(&mut w);
        validate_body(e, sig.as_bytes(), &w.buf)
    }

    fn bad(r: Result<(), WireError>) {
        assert!(matches!(r, Err(WireError::BadBody(_))), "{r:?}");
    }

    #[test]
    fn basic_types_both_orders() {
        for e in BOTH {
            check(e, "", |_| {}).unwrap();
            check(e, "ybnqiuxtdsog", |w| {
                w.y(7)
                    .u32(1)
                    .u16(2)
                    .u16(3)
                    .u32(4)
                    .u32(5)
                    .u64(6)
                    .u64(7)
                    .u64(8);
                w.s("héllo").s("/a/b").g("a{sv}");
            })
            .unwrap();
            check(e, "h", |w| {
                w.u32(0);
            })
            .unwrap();
        }
    }

    #[test]
    fn missing_and_trailing_bytes() {
        for e in BOTH {
            bad(check(e, "u", |w| {
                w.y(0).y(0);
            }));
            bad(check(e, "y", |w| {
                w.y(1).y(0);
            }));
            bad(check(e, "", |w| {
                w.y(0);
            }));
            bad(check(e, "s", |w| {
                w.u32(10).y(b'a');
            }));
            // Length word itself lies: huge length.
            bad(check(e, "s", |w| {
                w.u32(u32::MAX).y(0);
            }));
        }
    }

    #[test]
    fn booleans() {
        for e in BOTH {
            check(e, "b", |w| {
                w.u32(0);
            })
            .unwrap();
            bad(check(e, "b", |w| {
                w.u32(2);
            }));
            bad(check(e, "ab", |w| {
                w.array(4, |w| {
                    w.u32(1).u32(2);
                });
            }));
            check(e, "ab", |w| {
                w.array(4, |w| {
                    w.u32(1).u32(0);
                });
            })
            .unwrap();
            bad(check(e, "(yb)", |w| {
                w.y(0).u32(0x100);
            }));
        }
    }

    #[test]
    fn padding_must_be_zero() {
        for e in BOTH {
            let mut w = W::new(e);
            w.y(1).u32(5);
            assert!(validate_body(e, b"yu", &w.buf).is_ok());
            w.buf[2] = 1;
            bad(validate_body(e, b"yu", &w.buf));
            let mut w = W::new(e);
            w.y(1).u64(5);
            w.buf[7] = 9;
            bad(validate_body(e, b"yt", &w.buf));
        }
    }

    #[test]
    fn strings_utf8() {
        let cases: [(&[u8], bool); 9] = [
            (b"plain", true),
            ("\u{FFFE}".as_bytes(), true), // noncharacters are allowed
            ("\u{10FFFF}".as_bytes(), true),
            (b"\xC0\x80", false),         // overlong NUL
            (b"\xE0\x80\xAF", false),     // overlong '/'
            (b"\xED\xA0\x80", false),     // surrogate U+D800
            (b"\xF4\x90\x80\x80", false), // above U+10FFFF
            (b"a\0b", false),             // interior NUL
            (b"\xFF", false),
        ];
        for e in BOTH {
            for (s, good) in cases {
                let r = check(e, "s", |w| {
                    w.sb(s);
                });
                assert_eq!(r.is_ok(), good, "{s:?}");
            }
            // Missing terminator.
            bad(check(e, "s", |w| {
                w.u32(1).y(b'a').y(b'b');
            }));
        }
    }

    /// The std-only check the fast path must agree with.
    fn reference_str(b: &[u8]) -> Result<(), Why> {
        std::str::from_utf8(b).map_err(|_| "invalid UTF-8")?;
        if b.contains(&0) {
            return Err("NUL inside string");
        }
        Ok(())
    }

    /// Overlongs, surrogates, > U+10FFFF, truncated and stray continuation bytes, 0x7F/0x80
    /// boundaries and NUL, each at every offset of ASCII strings of lengths around the
    /// 8-byte word size: the word-at-a-time ASCII path never accepts what std plus the NUL
    /// check rejects, and reports the same error.
    #[test]
    fn check_str_agrees_with_std() {
        let inserts: [&[u8]; 16] = [
            b"\0",
            b"\x7F",
            b"\x80",
            b"\x01",
            b"\xC0\x80",
            b"\xC1\xBF",
            b"\xE0\x80\xAF",
            b"\xED\xA0\x80",
            b"\xED\xBF\xBF",
            b"\xF4\x90\x80\x80",
            b"\xF8\x88\x80\x80\x80",
            b"\xE2\x82",
            b"\xC3\xA9",
            "\u{10FFFF}".as_bytes(),
            b"\xFF",
            b"\xC3\xA9\0",
        ];
        let mut rejected = 0;
        for len in 0..=24 {
            let base = vec![b'x'; len];
            assert_eq!(check_str(&base), Ok(()));
            for at in 0..=len {
                for ins in inserts {
                    let mut v = base.clone();
                    v.splice(at..at, ins.iter().copied());
                    let want = reference_str(&v);
                    assert_eq!(check_str(&v), want, "{v:?}");
                    rejected += usize::from(want.is_err());
                }
            }
        }
        assert!(rejected > 1000);
        // Every single byte and every ASCII pair, in a word and in the tail.
        for b in 0..=255u8 {
            for pad in [0, 7, 8, 13] {
                let mut v = vec![b'a'; pad];
                v.push(b);
                assert_eq!(check_str(&v), reference_str(&v), "{v:?}");
                assert_eq!(ascii_without_nul(&v), (1..=0x7F).contains(&b));
            }
        }
    }

    /// The flat top-level loop gives the same offset or the same error as the general
    /// walker, on valid bodies of mixed signatures and on every single-byte corruption
    /// and truncation of them.
    #[test]
    fn validate_top_agrees_with_validate_values() {
        for e in BOTH {
            let mut samples: Vec<(&[u8], Vec<u8>)> = Vec::new();
            let mut w = W::new(e);
            w.array(1, |w| {
                w.y(1).y(2).y(3);
            });
            samples.push((b"ay", w.buf));
            let mut w = W::new(e);
            w.y(7).u16(1).u32(2).pad(8).u64(3).s("x\u{e9}");
            w.array(8, |w| {
                w.u64(1).u64(2);
            });
            w.array(2, |w| {
                w.u16(9);
            });
            samples.push((b"yqutsatan", w.buf));
            let mut w = W::new(e);
            w.s("k").array(1, |_| {}).u32(1).g("s").s("v");
            samples.push((b"sayuv", w.buf));
            let mut w = W::new(e);
            w.u32(5).array(8, |w| {
                w.s("k").g("i").u32(4);
            });
            w.array(4, |w| {
                w.s("a").s("b");
            });
            samples.push((b"ia{sv}as", w.buf));
            let mut w = W::new(e);
            w.array(4, |w| {
                w.u32(1).u32(0);
            });
            w.s("t");
            samples.push((b"abs", w.buf));
            for (sig, good) in samples {
                assert_eq!(
                    validate_top(e, sig, &good),
                    Ok(good.len()),
                    "{:?}",
                    String::from_utf8_lossy(sig)
                );
                let mut variants = Vec::new();
                for i in 0..good.len() {
                    for delta in [1u8, 0x80, 0xFF] {
                        let mut v = good.clone();
                        v[i] = v[i].wrapping_add(delta);
                        variants.push(v);
                    }
                }
                for cut in 0..good.len() {
                    variants.push(good[..cut].to_vec());
                }
                for v in variants {
                    assert_eq!(
                        validate_top(e, sig, &v),
                        validate_values(e, sig, &v, 0, 0),
                        "{:?} {v:?}",
                        String::from_utf8_lossy(sig)
                    );
                }
            }
        }
    }

    /// The inline short-signature cases give the same end or the same error as
    /// [`validate_top`], on valid bodies, every single-byte corruption (lengths, padding,
    /// string bytes, NUL), truncation and extension of them.
    #[test]
    fn validate_short_agrees_with_validate_top() {
        for e in BOTH {
            let mut samples: Vec<(&[u8], Vec<u8>)> = vec![(b"", Vec::new())];
            for s in ["", "abc", "x\u{e9}y", "0123456789abcdef"] {
                let mut w = W::new(e);
                w.s(s);
                samples.push((b"s", w.buf));
            }
            let mut w = W::new(e);
            w.array(1, |w| {
                w.y(1).y(2).y(3);
            });
            samples.push((b"ay", w.buf));
            samples.push((b"ay", vec![0; 4]));
            let mut w = W::new(e);
            w.array(2, |w| {
                w.u16(1).u16(2);
            });
            samples.push((b"aq", w.buf));
            for sig in [&b"at"[..], b"ax", b"ad"] {
                let mut w = W::new(e);
                w.array(8, |w| {
                    w.u64(1).u64(u64::MAX);
                });
                samples.push((sig, w.buf));
            }
            let mut w = W::new(e);
            w.array(4, |w| {
                w.u32(1).u32(0);
            });
            samples.push((b"ab", w.buf.clone()));
            samples.push((b"ah", w.buf.clone()));
            samples.push((b"au", w.buf));
            let mut n = 0;
            for (sig, good) in samples {
                assert_eq!(validate_short(e, sig, &good), Ok(good.len()));
                let mut variants = vec![good.clone()];
                for i in 0..good.len() {
                    for delta in [1u8, 4, 0x80, 0xFF] {
                        let mut v = good.clone();
                        v[i] = v[i].wrapping_add(delta);
                        variants.push(v);
                    }
                }
                for cut in 0..good.len() {
                    variants.push(good[..cut].to_vec());
                }
                for extra in 1..9 {
                    let mut v = good.clone();
                    v.resize(good.len() + extra, 0);
                    variants.push(v);
                }
                for v in variants {
                    n += 1;
                    assert_eq!(
                        validate_short(e, sig, &v),
                        validate_top(e, sig, &v),
                        "{:?} {v:?}",
                        String::from_utf8_lossy(sig)
                    );
                }
            }
            assert!(n > 500);
        }
    }

    #[test]
    fn path_errors_keep_their_order() {
        for e in BOTH {
            for (s, why) in [
                (&b"/a\xFF"[..], "invalid UTF-8"),
                (b"/a\0", "NUL inside string"),
                (b"/a-b", "invalid object path"),
                (b"", "invalid object path"),
            ] {
                let mut w = W::new(e);
                w.sb(s);
                assert_eq!(validate_values(e, b"o", &w.buf, 0, 0), Err(why));
            }
        }
    }

    #[test]
    fn paths_and_signatures() {
        for e in BOTH {
            bad(check(e, "o", |w| {
                w.s("a/b");
            }));
            bad(check(e, "o", |w| {
                w.s("/a/");
            }));
            bad(check(e, "g", |w| {
                w.g("a");
            }));
            bad(check(e, "g", |w| {
                w.g("(");
            }));
            // Signature value missing its NUL.
            bad(check(e, "g", |w| {
                w.y(1).y(b'i').y(b'x');
            }));
        }
    }

    #[test]
    fn arrays() {
        for e in BOTH {
            // Empty array of 8-aligned elements still carries the padding after the length.
            check(e, "at", |w| {
                w.array(8, |_| {});
            })
            .unwrap();
            assert_eq!(
                {
                    let mut w = W::new(e);
                    w.array(8, |_| {});
                    w.buf.len()
                },
                8
            );
            bad(check(e, "at", |w| {
                w.u32(0);
            }));
            check(e, "ata(ii)", |w| {
                w.array(8, |_| {});
                w.array(8, |w| {
                    w.u32(1).u32(2).pad(8).u32(3).u32(4);
                });
            })
            .unwrap();
            // Length not a multiple of the element size.
            bad(check(e, "ai", |w| {
                w.u32(6).u32(1).u16(2);
            }));
            // Length ends inside a struct element.
            bad(check(e, "a(ii)y", |w| {
                w.u32(4).pad(8).u32(1).u32(2).y(0);
            }));
            // Length ends inside a string element.
            bad(check(e, "asy", |w| {
                w.u32(5).s("abc").y(0);
            }));
            // 64 MiB cap, checked from the length word alone.
            bad(check(e, "ay", |w| {
                w.u32((MAX_ARRAY_LEN + 1) as u32);
            }));
            // Exactly 64 MiB is allowed by the cap (here it is just truncated).
            let r = check(e, "ay", |w| {
                w.u32(MAX_ARRAY_LEN as u32);
            });
            assert_eq!(r, Err(WireError::BadBody("truncated")));
            // Dict.
            check(e, "a{sv}", |w| {
                w.array(8, |w| {
                    w.s("k").g("i").u32(3).pad(8).s("k2").g("as").array(4, |w| {
                        w.s("x");
                    });
                });
            })
            .unwrap();
            // Nested arrays.
            check(e, "aas", |w| {
                w.array(4, |w| {
                    w.array(4, |w| {
                        w.s("a").s("b");
                    });
                    w.array(4, |_| {});
                });
            })
            .unwrap();
            // Inner array longer than the outer one.
            bad(check(e, "aay", |w| {
                w.u32(8).u32(8).u32(0).y(0).y(0).y(0).y(0);
            }));
        }
    }

    #[test]
    fn variants() {
        for e in BOTH {
            check(e, "v", |w| {
                w.g("(sv)").pad(8).s("x").g("y").y(3);
            })
            .unwrap();
            bad(check(e, "v", |w| {
                w.g("ii").u32(1).u32(2);
            }));
            bad(check(e, "v", |w| {
                w.g("").y(0);
            }));
            bad(check(e, "v", |w| {
                w.g("a").u32(0);
            }));
            // Bad value inside the variant.
            bad(check(e, "v", |w| {
                w.g("b").u32(3);
            }));
        }
    }

    fn nested_variants(e: Endian, n: usize) -> Vec<u8> {
        let mut w = W::new(e);
        for _ in 0..n - 1 {
            w.g("v");
        }
        w.g("y").y(1);
        w.buf
    }

    #[test]
    fn variant_depth() {
        for e in BOTH {
            assert!(validate_body(e, b"v", &nested_variants(e, 64)).is_ok());
            assert_eq!(
                validate_body(e, b"v", &nested_variants(e, 65)),
                Err(WireError::BadBody("nested too deeply"))
            );
        }
    }

    #[test]
    fn depth_counts_structs_and_variants_together() {
        // 32 structs (signature limit) + a variant + k structs inside it.
        let outer = format!("{}v{}", "(".repeat(32), ")".repeat(32));
        for (k, good) in [(31, true), (32, false)] {
            let inner = format!("{}y{}", "(".repeat(k), ")".repeat(k));
            let mut w = W::new(Endian::Little);
            w.g(&inner).pad(8).y(1);
            let r = validate_body(Endian::Little, outer.as_bytes(), &w.buf);
            assert_eq!(r.is_ok(), good, "k={k}: {r:?}");
        }
    }

    #[test]
    fn unix_fd_indexes_are_the_receivers_business() {
        // As dbus-daemon's validator: any index passes, even with no fds attached; only the
        // layout (alignment, array length) is checked.
        for e in BOTH {
            check(e, "h", |w| {
                w.u32(1);
            })
            .unwrap();
            check(e, "h", |w| {
                w.u32(u32::MAX);
            })
            .unwrap();
            check(e, "ah", |w| {
                w.array(4, |w| {
                    w.u32(0).u32(5);
                });
            })
            .unwrap();
            // Non-zero padding before the index.
            bad(check(e, "yh", |w| {
                w.y(1).y(1).y(0).y(0).u32(0);
            }));
            // An array length that is not a whole number of indexes.
            bad(check(e, "ah", |w| {
                w.u32(6).u32(0).y(0).y(0);
            }));
        }
    }

    #[test]
    fn invalid_signature_never_hangs() {
        for sig in [&b"a()"[..], b"()", b"(", b"a", b")", b"a{", b"z"] {
            let body = [8u8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
            assert!(validate_body(Endian::Little, sig, &body).is_err());
        }
    }

    #[test]
    fn skip_and_read() {
        for e in BOTH {
            let mut w = W::new(e);
            w.y(1).array(8, |w| {
                w.s("k").g("i").u32(3);
            });
            w.g("(sas)").pad(8).s("q").array(4, |w| {
                w.s("z");
            });
            w.s("last");
            let sig = b"ya{sv}vs";
            validate_body(e, sig, &w.buf).unwrap();
            let (sp, p) = skip_value(e, sig, 0, &w.buf, 0, 0).unwrap();
            assert_eq!(sp, 1);
            let (sp, p) = skip_value(e, sig, sp, &w.buf, p, 0).unwrap();
            assert_eq!(sp, 6);
            let (sp, p) = skip_value(e, sig, sp, &w.buf, p, 0).unwrap();
            assert_eq!(sp, 7);
            assert_eq!(read_str(e, &w.buf, p), Some("last"));
            let (sp, p) = skip_value(e, sig, sp, &w.buf, p, 0).unwrap();
            assert_eq!((sp, p), (8, w.buf.len()));
            assert_eq!(skip_value(e, sig, sp, &w.buf, p, 0), None);
        }
    }
}
