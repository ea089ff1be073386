//! Signature validation (the D-Bus specification, "Valid Signatures"): at most 255 bytes,
//! complete types only, dict entries only directly in arrays, and at most 32 levels of arrays
//! and 32 of structs and dict entries counted together (stricter than libdbus, which counts
//! dict entries separately).

/// Maximum signature length.
pub const MAX_SIGNATURE_LEN: usize = 255;

/// Maximum nesting of arrays, and separately of structs plus dict entries, in one signature.
pub const MAX_TYPE_NESTING: u32 = 32;

/// Whether `c` is a basic (non-container) type code; only these may be dict keys.
#[inline]
pub(crate) fn is_basic(c: u8) -> bool {
    matches!(
        c,
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b'h' | b's' | b'o' | b'g'
    )
}

/// Parse one complete type starting at `i`, with `arrays`/`structs` enclosing levels already
/// used; returns the index just past it. Recursion is bounded by the two nesting limits.
fn complete(sig: &[u8], i: usize, arrays: u32, structs: u32) -> Option<usize> {
    let c = *sig.get(i)?;
    match c {
        b'v' => Some(i + 1),
        _ if is_basic(c) => Some(i + 1),
        b'a' => {
            if arrays >= MAX_TYPE_NESTING {
                return None;
            }
            if sig.get(i + 1) == Some(&b'{') {
                // Dict entry: only legal right here, exactly a basic key and one value.
                if structs >= MAX_TYPE_NESTING || !is_basic(*sig.get(i + 2)?) {
                    return None;
                }
                let j = complete(sig, i + 3, arrays + 1, structs + 1)?;
                (sig.get(j) == Some(&b'}')).then_some(j + 1)
            } else {
                complete(sig, i + 1, arrays + 1, structs)
            }
        }
        b'(' => {
            if structs >= MAX_TYPE_NESTING || sig.get(i + 1) == Some(&b')') {
                return None;
            }
            let mut j = i + 1;
            loop {
                match sig.get(j)? {
                    b')' => return Some(j + 1),
                    _ => j = complete(sig, j, arrays, structs + 1)?,
                }
            }
        }
        // Stray closers, `{` outside an array, reserved and unknown codes.
        _ => None,
    }
}

/// End index of the complete type starting at `i` (validating it as it goes), or `None`.
/// Used by the body walker to find where an array's element type ends.
#[inline]
pub(crate) fn type_end(sig: &[u8], i: usize) -> Option<usize> {
    complete(sig, i, 0, 0)
}

/// Whether `sig` is a valid signature (zero or more complete types).
pub fn is_valid_signature(sig: &[u8]) -> bool {
    if sig.len() > MAX_SIGNATURE_LEN {
        return false;
    }
    let mut i = 0;
    while i < sig.len() {
        match complete(sig, i, 0, 0) {
            Some(j) => i = j,
            None => return false,
        }
    }
    true
}

/// Whether `sig` is exactly one complete type (as a variant's signature must be).
pub fn is_single_complete_type(sig: &[u8]) -> bool {
    sig.len() <= MAX_SIGNATURE_LEN && complete(sig, 0, 0, 0) == Some(sig.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        is_valid_signature(s.as_bytes())
    }

    #[test]
    fn valid_signatures() {
        for s in [
            "",
            "y",
            "ybnqiuxtdhsogv",
            "as",
            "a{sv}",
            "aa{sa{sv}}",
            "(i)",
            "(i(s(v)))",
            "a(ii)",
            "a{ya{ss}}",
            "a{oa{sa{sv}}}",
            "sa{sv}as",
            "a{h(ii)}",
        ] {
            assert!(ok(s), "{s:?} should be valid");
        }
    }

    #[test]
    fn invalid_signatures() {
        for s in [
            "a", "aa", "()", "(", "(i", ")", "i)", "{sv}", "a{vs}", "a{(i)s}", "a{s}", "a{sss}",
            "a{}", "a{s", "(i{sv})", "}", "r", "e", "m", "*", "?", "@", "&", "^", "\0", "ia", "z",
        ] {
            assert!(!ok(s), "{s:?} should be invalid");
        }
    }

    #[test]
    fn nesting_limits() {
        let arrays32 = format!("{}y", "a".repeat(32));
        let arrays33 = format!("{}y", "a".repeat(33));
        assert!(ok(&arrays32));
        assert!(!ok(&arrays33));
        let structs32 = format!("{}y{}", "(".repeat(32), ")".repeat(32));
        let structs33 = format!("{}y{}", "(".repeat(33), ")".repeat(33));
        assert!(ok(&structs32));
        assert!(!ok(&structs33));
        // Dict entries count as struct levels.
        let mixed_ok = format!("{}a{{sy}}{}", "(".repeat(31), ")".repeat(31));
        let mixed_bad = format!("{}a{{sy}}{}", "(".repeat(32), ")".repeat(32));
        assert!(ok(&mixed_ok));
        assert!(!ok(&mixed_bad));
        // Both limits at once: 32 arrays around 32 structs is still fine.
        let both = format!("{}{}y{}", "a".repeat(32), "(".repeat(32), ")".repeat(32));
        assert!(ok(&both));
    }

    #[test]
    fn length_limit() {
        assert!(ok(&"y".repeat(255)));
        assert!(!ok(&"y".repeat(256)));
        assert!(!is_single_complete_type(
            format!("({})", "y".repeat(254)).as_bytes()
        ));
        assert!(is_single_complete_type(
            format!("({})", "y".repeat(253)).as_bytes()
        ));
    }

    #[test]
    fn single_complete() {
        assert!(is_single_complete_type(b"i"));
        assert!(is_single_complete_type(b"a{sv}"));
        assert!(is_single_complete_type(b"(iv)"));
        assert!(is_single_complete_type(b"v"));
        assert!(!is_single_complete_type(b""));
        assert!(!is_single_complete_type(b"ii"));
        assert!(!is_single_complete_type(b"a"));
        assert!(!is_single_complete_type(b"{sv}"));
    }

    #[test]
    fn type_end_positions() {
        assert_eq!(type_end(b"a{sv}i", 0), Some(5));
        assert_eq!(type_end(b"a{sv}i", 1), None);
        assert_eq!(type_end(b"(ii)s", 0), Some(4));
        assert_eq!(type_end(b"x", 1), None);
    }
}
