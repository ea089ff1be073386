//! Validation of the D-Bus name grammars (bus, interface, member, error names, object paths)
//! and typed wrappers that can only hold valid values.
//!
//! The checks follow the D-Bus specification's "Valid Names" rules; every function works on
//! borrowed bytes so the hot path can validate header fields in place without allocating.

/// Maximum length of a bus, interface, member or error name.
pub const MAX_NAME_LEN: usize = 255;

// Byte classes for the name grammars (they build the transition tables below).
/// `[A-Za-z_]`: may start any element.
const C_WORD: u8 = 1;
/// `[0-9]`: inside elements, and at the start of unique-name elements.
const C_DIGIT: u8 = 2;
/// `-`: in bus names only.
const C_DASH: u8 = 4;
/// `.`: separates the elements of dotted names.
const C_DOT: u8 = 8;
/// `/`: separates the elements of object paths.
const C_SLASH: u8 = 16;

/// The class bits of every byte; non-ASCII bytes, NUL and all other punctuation have none,
/// so a name that passes is ASCII (hence valid UTF-8) without a separate check.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() || c == b'_' {
            C_WORD
        } else if c.is_ascii_digit() {
            C_DIGIT
        } else if c == b'-' {
            C_DASH
        } else if c == b'.' {
            C_DOT
        } else if c == b'/' {
            C_SLASH
        } else {
            0
        };
        i += 1;
    }
    t
};

/// States of a [`Grammar`] walk. Only `IN_FIRST` (one element) and `IN_LATER` (two or more)
/// accept; `DEAD` absorbs.
const AT_FIRST: u8 = 0;
const IN_FIRST: u8 = 1;
const AT_LATER: u8 = 2;
const IN_LATER: u8 = 3;
const DEAD: u8 = 4;

/// A separated-name grammar as a transition table (state, byte) -> state: non-empty
/// elements of bytes in class `elem`, each starting with a byte in `first`, separated by
/// one byte of class `sep`. Entries hold the next state already multiplied by 256 (its
/// row's offset), so a step is one OR with the byte, one mask and one load: four
/// instructions per byte where a state number to shift took six (header names are walked
/// byte by byte for every message). Rows 5-7 are unused (all `DEAD`); they let the index
/// be masked instead of bounds-checked.
struct Grammar([u16; 8 * 256]);

/// A state's row offset in a [`Grammar`] table.
const fn row(state: u8) -> u16 {
    (state as u16) << 8
}

const fn grammar(first: u8, elem: u8, sep: u8) -> Grammar {
    let mut t = [row(DEAD); 8 * 256];
    let mut c = 0;
    while c < 256 {
        let k = CLASS[c];
        if k & first != 0 {
            t[(AT_FIRST as usize) << 8 | c] = row(IN_FIRST);
            t[(AT_LATER as usize) << 8 | c] = row(IN_LATER);
        }
        if k & elem != 0 {
            t[(IN_FIRST as usize) << 8 | c] = row(IN_FIRST);
            t[(IN_LATER as usize) << 8 | c] = row(IN_LATER);
        } else if sep != 0 && k == sep {
            t[(IN_FIRST as usize) << 8 | c] = row(AT_LATER);
            t[(IN_LATER as usize) << 8 | c] = row(AT_LATER);
        }
        c += 1;
    }
    Grammar(t)
}

impl Grammar {
    /// The state after reading all of `s` from `AT_FIRST`.
    #[inline]
    fn run(&self, s: &[u8]) -> u8 {
        let mut at = usize::from(row(AT_FIRST));
        for &c in s {
            at = usize::from(self.0[(at | usize::from(c)) & (8 * 256 - 1)]);
        }
        (at >> 8) as u8
    }
}

/// Interface, error name: `[A-Za-z_][A-Za-z0-9_]*` elements separated by `.`.
static INTERFACE: Grammar = grammar(C_WORD, C_WORD | C_DIGIT, C_DOT);
/// Well-known bus name, namespace: as INTERFACE, plus `-`.
static WELL_KNOWN: Grammar = grammar(C_WORD | C_DASH, C_WORD | C_DIGIT | C_DASH, C_DOT);
/// Unique name after the `:`: elements may also start with a digit.
static UNIQUE: Grammar = grammar(C_WORD | C_DIGIT | C_DASH, C_WORD | C_DIGIT | C_DASH, C_DOT);
/// Member: a single INTERFACE element.
static MEMBER: Grammar = grammar(C_WORD, C_WORD | C_DIGIT, 0);
/// Object path after the leading `/`: `[A-Za-z0-9_]+` elements separated by `/`.
static PATH: Grammar = grammar(C_WORD | C_DIGIT, C_WORD | C_DIGIT, C_SLASH);

/// Dot-separated names: at least `min_elems` (1 or 2) non-empty elements of `[A-Za-z0-9_]`
/// (plus `-` when `allow_dash`); when `digit_start` is false no element may start with a
/// digit.
#[inline]
fn dotted(s: &[u8], allow_dash: bool, digit_start: bool, min_elems: usize) -> bool {
    if s.len() > MAX_NAME_LEN {
        return false;
    }
    let g = match (allow_dash, digit_start) {
        (false, _) => &INTERFACE,
        (true, false) => &WELL_KNOWN,
        (true, true) => &UNIQUE,
    };
    match g.run(s) {
        IN_LATER => true,
        IN_FIRST => min_elems <= 1,
        _ => false,
    }
}

/// [`is_valid_unique_name`] on bytes.
#[inline]
pub fn unique_name_bytes(b: &[u8]) -> bool {
    match b.split_first() {
        Some((b':', rest)) => b.len() <= MAX_NAME_LEN && UNIQUE.run(rest) == IN_LATER,
        _ => false,
    }
}

/// [`is_valid_well_known_name`] on bytes.
#[inline]
pub fn well_known_name_bytes(b: &[u8]) -> bool {
    b.len() <= MAX_NAME_LEN && WELL_KNOWN.run(b) == IN_LATER
}

/// [`is_valid_bus_name`] on bytes.
#[inline]
pub fn bus_name_bytes(b: &[u8]) -> bool {
    if b.first() == Some(&b':') {
        unique_name_bytes(b)
    } else {
        well_known_name_bytes(b)
    }
}

/// [`is_valid_interface`] (and error name) on bytes.
#[inline]
pub fn interface_bytes(b: &[u8]) -> bool {
    b.len() <= MAX_NAME_LEN && INTERFACE.run(b) == IN_LATER
}

/// [`is_valid_member`] on bytes.
#[inline]
pub fn member_bytes(b: &[u8]) -> bool {
    b.len() <= MAX_NAME_LEN && MEMBER.run(b) == IN_FIRST
}

/// [`is_valid_object_path`] on bytes.
#[inline]
pub fn object_path_bytes(b: &[u8]) -> bool {
    match b.split_first() {
        Some((b'/', [])) => true,
        Some((b'/', rest)) => matches!(PATH.run(rest), IN_FIRST | IN_LATER),
        _ => false,
    }
}

/// A unique connection name such as `:1.42`.
pub fn is_valid_unique_name(s: &str) -> bool {
    unique_name_bytes(s.as_bytes())
}

/// A well-known bus name such as `org.example.App` (not unique, not starting with a digit).
pub fn is_valid_well_known_name(s: &str) -> bool {
    well_known_name_bytes(s.as_bytes())
}

/// Any bus name: unique or well-known.
pub fn is_valid_bus_name(s: &str) -> bool {
    bus_name_bytes(s.as_bytes())
}

/// An interface name such as `org.freedesktop.DBus`.
pub fn is_valid_interface(s: &str) -> bool {
    interface_bytes(s.as_bytes())
}

/// An error name: same grammar as an interface name.
pub fn is_valid_error_name(s: &str) -> bool {
    is_valid_interface(s)
}

/// A member (method or signal) name: one element of `[A-Za-z0-9_]`, not starting with a digit.
pub fn is_valid_member(s: &str) -> bool {
    member_bytes(s.as_bytes())
}

/// An object path: `/` or `/`-separated non-empty elements of `[A-Za-z0-9_]`, no trailing `/`.
pub fn is_valid_object_path(s: &str) -> bool {
    object_path_bytes(s.as_bytes())
}

/// A namespace prefix for `arg0namespace`: like a bus name but a single element is allowed.
pub fn is_valid_namespace(s: &str) -> bool {
    dotted(s.as_bytes(), true, false, 1)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// Validate `s`; `None` if it does not follow the grammar.
            pub fn new(s: &str) -> Option<Self> {
                $check(s).then(|| Self(s.to_owned()))
            }
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A valid bus name, unique (`:1.0`) or well-known (`org.example.App`).
    BusName,
    is_valid_bus_name
);
name_type!(
    /// A valid interface name.
    InterfaceName,
    is_valid_interface
);
name_type!(
    /// A valid member name.
    MemberName,
    is_valid_member
);
name_type!(
    /// A valid error name.
    ErrorName,
    is_valid_error_name
);
name_type!(
    /// A valid object path.
    ObjectPath,
    is_valid_object_path
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_names() {
        assert!(is_valid_unique_name(":1.0"));
        assert!(is_valid_unique_name(":1.0-a_b"));
        assert!(!is_valid_unique_name(":1"));
        assert!(!is_valid_unique_name("1.0"));
        assert!(is_valid_well_known_name("org.example-x.App_1"));
        assert!(!is_valid_well_known_name("org.1example"));
        assert!(!is_valid_well_known_name("org"));
        assert!(!is_valid_well_known_name(".org.x"));
        assert!(!is_valid_well_known_name("org..x"));
        assert!(!is_valid_well_known_name(&format!("a.{}", "b".repeat(254))));
        assert!(is_valid_bus_name(":1.5"));
    }

    #[test]
    fn interfaces_members_paths() {
        assert!(is_valid_interface("org.freedesktop.DBus"));
        assert!(!is_valid_interface("org.free-desktop.DBus"));
        assert!(is_valid_member("Hello_2"));
        assert!(!is_valid_member("2Hello"));
        assert!(!is_valid_member("a.b"));
        assert!(is_valid_object_path("/"));
        assert!(is_valid_object_path("/org/x_1"));
        assert!(!is_valid_object_path("/org/"));
        assert!(!is_valid_object_path("//org"));
        assert!(!is_valid_object_path("org"));
        assert!(is_valid_namespace("a"));
        assert!(!is_valid_namespace("1a"));
        assert!(is_valid_namespace("com.example"));
    }

    /// The straightforward split-based grammar the table-driven checkers replaced.
    mod reference {
        use super::super::MAX_NAME_LEN;

        fn is_elem_char(c: u8, allow_dash: bool) -> bool {
            c.is_ascii_alphanumeric() || c == b'_' || (allow_dash && c == b'-')
        }

        fn dotted(s: &[u8], allow_dash: bool, digit_start: bool, min: usize) -> bool {
            if s.is_empty() || s.len() > MAX_NAME_LEN {
                return false;
            }
            let mut elems = 0;
            for elem in s.split(|&c| c == b'.') {
                let Some(&first) = elem.first() else {
                    return false;
                };
                if !digit_start && first.is_ascii_digit() {
                    return false;
                }
                if !elem.iter().all(|&c| is_elem_char(c, allow_dash)) {
                    return false;
                }
                elems += 1;
            }
            elems >= min
        }

        pub fn unique(s: &[u8]) -> bool {
            match s.split_first() {
                Some((b':', rest)) => s.len() <= MAX_NAME_LEN && dotted(rest, true, true, 2),
                _ => false,
            }
        }
        pub fn well_known(s: &[u8]) -> bool {
            dotted(s, true, false, 2)
        }
        pub fn interface(s: &[u8]) -> bool {
            dotted(s, false, false, 2)
        }
        pub fn namespace(s: &[u8]) -> bool {
            dotted(s, true, false, 1)
        }
        pub fn member(b: &[u8]) -> bool {
            !b.is_empty()
                && b.len() <= MAX_NAME_LEN
                && !b[0].is_ascii_digit()
                && b.iter().all(|&c| is_elem_char(c, false))
        }
        pub fn path(b: &[u8]) -> bool {
            if b == b"/" {
                return true;
            }
            if b.first() != Some(&b'/') || b.last() == Some(&b'/') {
                return false;
            }
            b[1..]
                .split(|&c| c == b'/')
                .all(|e| !e.is_empty() && e.iter().all(|&c| is_elem_char(c, false)))
        }
    }

    /// Every string of up to 5 bytes over an alphabet with each byte class (and NUL,
    /// non-ASCII, other punctuation), plus long ones at the length limit: the fast checkers
    /// agree with the reference grammar on all of them.
    #[test]
    fn agrees_with_reference() {
        const ALPHABET: &[u8] = b"aZ_1-./:\0\xC3\xFF ";
        let mut inputs = crate::wire::all_strings(ALPHABET, 5);
        for n in [253, 254, 255, 256, 300] {
            for base in [&b"a."[..], b":1.", b"/a", b"a"] {
                let mut v = base.to_vec();
                v.resize(n, b'x');
                inputs.push(v.clone());
                v[n - 1] = b'.';
                inputs.push(v);
            }
        }
        let mut valid = [0usize; 6];
        for b in &inputs {
            let checks = [
                (unique_name_bytes(b), reference::unique(b)),
                (well_known_name_bytes(b), reference::well_known(b)),
                (interface_bytes(b), reference::interface(b)),
                (member_bytes(b), reference::member(b)),
                (object_path_bytes(b), reference::path(b)),
                (dotted(b, true, false, 1), reference::namespace(b)),
            ];
            for (i, (fast, slow)) in checks.into_iter().enumerate() {
                assert_eq!(fast, slow, "check {i} on {:?}", String::from_utf8_lossy(b));
                valid[i] += usize::from(fast);
            }
            assert_eq!(
                bus_name_bytes(b),
                reference::unique(b) || reference::well_known(b)
            );
            if let Ok(s) = std::str::from_utf8(b) {
                assert_eq!(is_valid_namespace(s), reference::namespace(b));
                assert_eq!(is_valid_object_path(s), reference::path(b));
            }
        }
        // Every grammar accepts something, so the comparison is not vacuous.
        assert!(valid.iter().all(|&n| n > 100), "{valid:?}");
    }

    #[test]
    fn valid_names_are_ascii() {
        for b in [
            &b"org.\xC3\xA9x"[..],
            b"/\xC3\xA9",
            b"a\0.b",
            b":1.\xFF",
            b"M\x80",
        ] {
            assert!(!bus_name_bytes(b) && !interface_bytes(b));
            assert!(!member_bytes(b) && !object_path_bytes(b));
        }
    }

    #[test]
    fn newtypes() {
        assert!(BusName::new("org.example.X").is_some());
        assert!(ObjectPath::new("/a/").is_none());
        assert_eq!(MemberName::new("Ping").unwrap().as_str(), "Ping");
    }
}
