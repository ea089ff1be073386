//! The system's user database (passwd and group through NSS), as the configuration needs it:
//! the bus core asks through [`crate::bus::policy::UserDb`] and never looks itself.

use crate::bus::policy::UserDb;

/// The user database of this system, through the C library's NSS lookups.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nss;

impl UserDb for Nss {
    fn uid_by_name(&self, name: &str) -> Option<u32> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Some(u.uid.as_raw()),
            _ => None,
        }
    }

    fn gid_by_name(&self, name: &str) -> Option<u32> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve() {
        assert_eq!(Nss.uid_by_name("root"), Some(0));
        assert_eq!(Nss.gid_by_name("root"), Some(0));
        assert_eq!(Nss.uid_by_name("no-such-user-sluicebus"), None);
    }
}
