//! Unique names and the connections carrying them, looked up by number.
//!
//! The bus assigns every connection `:1.N` at Hello (`Bus::activate`), N counting up and
//! never reused. A message to a unique name is the common case (every reply, and calls
//! addressed by unique name), so its destination is resolved by parsing N and looking the
//! number up, rather than hashing the name's bytes: the whole lookup then costs about as
//! much as hashing the string alone did. Only the canonical spelling of N (decimal, no
//! leading zero) is the name the bus gave out: `:1.07` is a valid bus name that nobody
//! owns, exactly as in dbus-daemon, which compares unique names as strings.

use super::ConnId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// The N of a canonical `:1.N`, or None for any other name (which no connection carries).
pub fn number(name: &str) -> Option<u64> {
    number_of_bytes(name.as_bytes())
}

/// [`number`] of a name's bytes.
#[inline]
pub fn number_of_bytes(name: &[u8]) -> Option<u64> {
    let digits = name.strip_prefix(b":1.")?;
    if digits.is_empty() || (digits[0] == b'0' && digits.len() > 1) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// Hashes a unique-name number with one multiplication (Fibonacci hashing): the numbers
/// are the bus's own, consecutive, so a keyed hash defends against nothing here, and the
/// multiplication spreads them over both the table's bucket bits (low) and tag bits
/// (high) of the hash.
#[derive(Default)]
pub struct NumberHasher(u64);

impl Hasher for NumberHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for the u64 keys here; correct for anything else all the same.
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Unique name → connection, keyed by the name's number.
#[derive(Debug)]
pub struct UniqueNames {
    by_number: HashMap<u64, (Rc<str>, ConnId), BuildHasherDefault<NumberHasher>>,
    /// Changes whenever a name is added or removed, from 1 on (0 is never current): a
    /// resolution remembered with the generation of its time is still right while the
    /// generation is the same (`Bus::resolve_bytes_from`).
    generation: u64,
}

impl Default for UniqueNames {
    fn default() -> Self {
        UniqueNames {
            by_number: HashMap::default(),
            generation: 1,
        }
    }
}

impl UniqueNames {
    /// `name` (one the bus assigned: `:1.N`) now belongs to `id`.
    pub fn insert(&mut self, name: Rc<str>, id: ConnId) {
        match number(&name) {
            Some(n) => {
                self.by_number.insert(n, (name, id));
                self.generation += 1;
            }
            // The bus formats its names itself; nothing else can reach here.
            None => log::error!("not a unique name the bus assigns: {name}"),
        }
    }

    /// `name` is gone.
    pub fn remove(&mut self, name: &str) {
        if let Some(n) = number(name) {
            self.by_number.remove(&n);
            self.generation += 1;
        }
    }

    /// The current generation (see the field).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The connection carrying the unique name numbered `n`.
    #[inline]
    pub fn get_number(&self, n: u64) -> Option<ConnId> {
        self.by_number.get(&n).map(|(_, id)| *id)
    }

    /// The connection carrying `name`.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&ConnId> {
        self.get_bytes(name.as_bytes())
    }

    /// The connection carrying the name whose bytes are `name`.
    #[inline]
    pub fn get_bytes(&self, name: &[u8]) -> Option<&ConnId> {
        self.by_number
            .get(&number_of_bytes(name)?)
            .map(|(_, id)| id)
    }

    /// Every unique name and its connection, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Rc<str>, &ConnId)> {
        self.by_number.values().map(|(name, id)| (name, id))
    }

    /// Every unique name, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Rc<str>> {
        self.by_number.values().map(|(name, _)| name)
    }

    /// How many connections have a unique name.
    pub fn len(&self) -> usize {
        self.by_number.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_spelling_has_a_number() {
        assert_eq!(number(":1.0"), Some(0));
        assert_eq!(number(":1.42"), Some(42));
        assert_eq!(number(":1.18446744073709551615"), Some(u64::MAX));
        for other in [
            ":1.",
            ":1.01",
            ":1.00",
            ":1.+4",
            ":1.4a",
            ":1.4.2",
            ":2.4",
            ":1:4",
            "1.4",
            ":1.18446744073709551616",
            "org.example.Name",
            "",
        ] {
            assert_eq!(number(other), None, "{other}");
        }
    }

    #[test]
    fn names_are_found_by_their_number_and_only_by_their_own_spelling() {
        let mut u = UniqueNames::default();
        u.insert(Rc::from(":1.7"), 3);
        u.insert(Rc::from(":1.70"), 4);
        assert_eq!(u.get(":1.7"), Some(&3));
        assert_eq!(u.get(":1.70"), Some(&4));
        assert_eq!(u.get(":1.07"), None);
        assert_eq!(u.get(":1.700"), None);
        assert_eq!(u.len(), 2);
        u.remove(":1.7");
        assert_eq!(u.get(":1.7"), None);
        assert_eq!(u.keys().map(|k| &**k).collect::<Vec<_>>(), [":1.70"]);
    }
}
