//! Signature validation (the D-Bus specification, "Valid Signatures"): at most 255 bytes,
//! complete types only, dict entries only directly in arrays, and at most 32 nested arrays and
//! 32 nested structs ("32 array type codes and 32 open parentheses"). Dict entries are curly
//! brackets, not parentheses, so they do not count against the struct limit (as in libdbus,
//! which counts them on their own); each one sits directly in an array, so the array limit
//! bounds them too. Arrays are counted through structs (`a(a(y))` is two levels), as the
//! specification's "array of array of ... struct of struct" reads; libdbus counts only
//! consecutive `a` codes there.

use arrayvec::ArrayVec;

/// Maximum signature length.
pub const MAX_SIGNATURE_LEN: usize = 255;

/// Maximum nesting of arrays, and separately of structs, in one signature.
pub const MAX_TYPE_NESTING: u32 = 32;

/// Structs and dict entries that can be open at once: 32 structs, and a dict entry per array.
const MAX_OPEN: usize = 2 * MAX_TYPE_NESTING as usize;

/// Whether `c` is a basic (non-container) type code; only these may be dict keys.
#[inline]
pub(crate) const fn is_basic(c: u8) -> bool {
    matches!(
        c,
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b'h' | b's' | b'o' | b'g'
    )
}

/// An open struct or dict entry while scanning a signature.
#[derive(Clone, Copy)]
struct Open {
    /// A dict entry (`{`), else a struct.
    dict: bool,
    /// Arrays enclosing the container's members.
    arrays: u32,
    /// Complete types seen inside so far (a dict entry's key counts).
    members: u32,
}

/// Scan complete types from `start` in one loop, without recursion: exactly one when `one`,
/// else all of them up to the end of `sig`. Returns the index just past them, or `None` if
/// the grammar or a nesting limit is broken (32 arrays and 32 structs, each counted from
/// `start`).
fn scan(sig: &[u8], start: usize, one: bool) -> Option<usize> {
    if !one && start == sig.len() {
        return Some(start);
    }
    let mut open: ArrayVec<Open, MAX_OPEN> = ArrayVec::new();
    // Arrays around the type being read (including `a` prefixes already read).
    let mut arrays = 0u32;
    // Structs open around it.
    let mut structs = 0u32;
    let mut i = start;
    loop {
        let c = *sig.get(i)?;
        i += 1;
        match c {
            b'a' => {
                if arrays >= MAX_TYPE_NESTING {
                    return None;
                }
                arrays += 1;
                if sig.get(i) == Some(&b'{') {
                    // Dict entry: only legal right here, exactly a basic key and one value.
                    if !is_basic(*sig.get(i + 1)?) {
                        return None;
                    }
                    i += 2;
                    open.try_push(Open {
                        dict: true,
                        arrays,
                        members: 1,
                    })
                    .ok()?;
                }
                continue;
            }
            b'(' => {
                if sig.get(i) == Some(&b')') || structs >= MAX_TYPE_NESTING {
                    return None;
                }
                structs += 1;
                open.try_push(Open {
                    dict: false,
                    arrays,
                    members: 0,
                })
                .ok()?;
                continue;
            }
            // A closer right after an `a` leaves that array without an element type.
            b')' => {
                let o = open.pop()?;
                if o.dict || arrays != o.arrays {
                    return None;
                }
                structs -= 1;
            }
            b'}' => {
                let o = open.pop()?;
                if !o.dict || o.members != 2 || arrays != o.arrays {
                    return None;
                }
            }
            b'v' => {}
            _ if is_basic(c) => {}
            // `{` outside an array, reserved and unknown codes.
            _ => return None,
        }
        // A complete type ended here: the arrays around it end with it.
        match open.last_mut() {
            Some(o) => {
                arrays = o.arrays;
                o.members += 1;
            }
            None => {
                if one || i == sig.len() {
                    return Some(i);
                }
                arrays = 0;
            }
        }
    }
}

/// End index of the complete type starting at `i` (validating it as it goes), or `None`.
/// Used by the body walker to find where an array's element type ends.
#[inline]
pub(crate) fn type_end(sig: &[u8], i: usize) -> Option<usize> {
    scan(sig, i, true)
}

/// Class of a signature byte for [`flat`]: a basic type or a variant.
const FLAT_SINGLE: u8 = 1;
/// Class of a signature byte for [`flat`]: an array.
const FLAT_ARRAY: u8 = 2;
/// [`FLAT_SINGLE`] or [`FLAT_ARRAY`] per byte; 0 for containers and invalid codes.
const FLAT_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = if c as u8 == b'a' {
            FLAT_ARRAY
        } else if c as u8 == b'v' || is_basic(c as u8) {
            FLAT_SINGLE
        } else {
            0
        };
        c += 1;
    }
    t
};

/// The common flat case in one table-driven loop: basic types, variants and (nested)
/// arrays of them. `None` if `sig` has a struct, a dict entry or an invalid code (then
/// [`scan`] decides), else whether it is valid (every `a` has an element, at most 32
/// nested arrays).
#[inline]
fn flat(sig: &[u8]) -> Option<bool> {
    let mut arrays = 0u32;
    for &c in sig {
        match FLAT_CLASS[usize::from(c)] {
            FLAT_SINGLE => arrays = 0,
            FLAT_ARRAY => {
                arrays += 1;
                if arrays > MAX_TYPE_NESTING {
                    return Some(false);
                }
            }
            _ => return None,
        }
    }
    Some(arrays == 0)
}

/// Whether `sig` is a valid signature (zero or more complete types).
#[inline]
pub fn is_valid_signature(sig: &[u8]) -> bool {
    sig.len() <= MAX_SIGNATURE_LEN
        && match flat(sig) {
            Some(valid) => valid,
            None => scan(sig, 0, false).is_some(),
        }
}

/// Whether `sig` is exactly one complete type (as a variant's signature must be).
pub fn is_single_complete_type(sig: &[u8]) -> bool {
    sig.len() <= MAX_SIGNATURE_LEN && scan(sig, 0, true) == Some(sig.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        is_valid_signature(s.as_bytes())
    }

    /// The recursive grammar the loop in `scan` replaced.
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
                    if !is_basic(*sig.get(i + 2)?) {
                        return None;
                    }
                    let j = complete(sig, i + 3, arrays + 1, structs)?;
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
            _ => None,
        }
    }

    fn reference_valid(sig: &[u8]) -> bool {
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

    /// Every string of up to 6 bytes over the signature alphabet (and a few invalid codes),
    /// and deep nestings around the limits: `scan` agrees with the recursive grammar, for
    /// whole signatures, single complete types and `type_end` at every offset.
    #[test]
    fn scan_agrees_with_recursive_grammar() {
        const ALPHABET: &[u8] = b"ay(){}vsz";
        let mut inputs = crate::wire::all_strings(ALPHABET, 6);
        for n in [30, 31, 32, 33] {
            for (open, mid, close) in [
                ("a", "y", ""),
                ("(", "y", ")"),
                ("a{s", "y", "}"),
                ("(a", "y", ")"),
                ("a(", "y", ")"),
                ("a{sa(", "y", ")}"),
            ] {
                let s = format!("{}{mid}{}", open.repeat(n), close.repeat(n));
                inputs.push(s.clone().into_bytes());
                inputs.push(format!("y{s}ay").into_bytes());
            }
        }
        let mut valid = 0;
        for s in &inputs {
            let want = reference_valid(s);
            assert_eq!(
                is_valid_signature(s),
                want,
                "{:?}",
                String::from_utf8_lossy(s)
            );
            valid += usize::from(want);
            assert_eq!(
                is_single_complete_type(s),
                s.len() <= MAX_SIGNATURE_LEN && complete(s, 0, 0, 0) == Some(s.len()),
                "{:?}",
                String::from_utf8_lossy(s)
            );
            for i in 0..=s.len() {
                assert_eq!(type_end(s, i), complete(s, i, 0, 0));
            }
        }
        assert!(valid > 1000, "{valid}");
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
        // Dict entries are not parentheses: 32 structs around a dict entry, and 32 dict
        // entries (each in its array) around 32 structs, are valid; one struct more is not.
        let structs_dict = format!("{}a{{sy}}{}", "(".repeat(32), ")".repeat(32));
        assert!(ok(&structs_dict));
        let dicts_structs = |n: usize| {
            let inner = format!("{}y{}", "(".repeat(n), ")".repeat(n));
            format!("{}{inner}{}", "a{s".repeat(32), "}".repeat(32))
        };
        assert!(ok(&dicts_structs(32)));
        assert!(!ok(&dicts_structs(33)));
        assert!(!ok(&format!("{}a{{sy}}{}", "(".repeat(33), ")".repeat(33))));
        // Dict entries are bounded by the arrays they sit in.
        assert!(!ok(&format!("{}y{}", "a{s".repeat(33), "}".repeat(33))));
        // Arrays are counted through structs.
        assert!(!ok(&format!("{}y{}", "a(".repeat(33), ")".repeat(33))));
        assert!(ok(&format!("{}y{}", "a(".repeat(32), ")".repeat(32))));
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
