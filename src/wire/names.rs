//! Validation of the D-Bus name grammars (bus, interface, member, error names, object paths)
//! and typed wrappers that can only hold valid values.
//!
//! The checks follow the D-Bus specification's "Valid Names" rules; every function works on
//! borrowed bytes so the hot path can validate header fields in place without allocating.

/// Maximum length of a bus, interface, member or error name.
pub const MAX_NAME_LEN: usize = 255;

fn is_elem_char(c: u8, allow_dash: bool) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || (allow_dash && c == b'-')
}

/// Shared checker for dot-separated names: at least two non-empty elements of `[A-Za-z0-9_]`
/// (plus `-` when `allow_dash`); when `digit_start` is false no element may start with a digit.
fn dotted(s: &[u8], allow_dash: bool, digit_start: bool) -> bool {
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
    elems >= 2
}

/// A unique connection name such as `:1.42`.
pub fn is_valid_unique_name(s: &str) -> bool {
    match s.as_bytes().split_first() {
        Some((b':', rest)) => s.len() <= MAX_NAME_LEN && dotted(rest, true, true),
        _ => false,
    }
}

/// A well-known bus name such as `org.example.App` (not unique, not starting with a digit).
pub fn is_valid_well_known_name(s: &str) -> bool {
    dotted(s.as_bytes(), true, false)
}

/// Any bus name: unique or well-known.
pub fn is_valid_bus_name(s: &str) -> bool {
    is_valid_unique_name(s) || is_valid_well_known_name(s)
}

/// An interface name such as `org.freedesktop.DBus`.
pub fn is_valid_interface(s: &str) -> bool {
    dotted(s.as_bytes(), false, false)
}

/// An error name: same grammar as an interface name.
pub fn is_valid_error_name(s: &str) -> bool {
    is_valid_interface(s)
}

/// A member (method or signal) name: one element of `[A-Za-z0-9_]`, not starting with a digit.
pub fn is_valid_member(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && !b[0].is_ascii_digit()
        && b.iter().all(|&c| is_elem_char(c, false))
}

/// An object path: `/` or `/`-separated non-empty elements of `[A-Za-z0-9_]`, no trailing `/`.
pub fn is_valid_object_path(s: &str) -> bool {
    let b = s.as_bytes();
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

/// A namespace prefix for `arg0namespace`: like a bus name but a single element is allowed.
pub fn is_valid_namespace(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return false;
    }
    b.split(|&c| c == b'.').all(|e| {
        matches!(e.first(), Some(c) if !c.is_ascii_digit())
            && e.iter().all(|&c| is_elem_char(c, true))
    })
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

    #[test]
    fn newtypes() {
        assert!(BusName::new("org.example.X").is_some());
        assert!(ObjectPath::new("/a/").is_none());
        assert_eq!(MemberName::new("Ping").unwrap().as_str(), "Ping");
    }
}
