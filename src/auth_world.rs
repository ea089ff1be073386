//! The real system behind the SASL state machine ([`AuthWorld`]): the kernel's random
//! numbers, the user database, the clock, and the DBUS_COOKIE_SHA1 keyring in the user's
//! home directory. Also [`new_guid`], which needs the same randomness and clock.

use crate::keyring;
use crate::wire::auth::{AuthWorld, CookieSecret};
use std::path::PathBuf;

/// The world as it is. Cheap to make (no allocation unless a keyring directory is set).
#[derive(Debug, Default, Clone)]
pub struct SystemAuthWorld {
    /// Use this directory instead of `~user/.dbus-keyrings` (tests, odd setups).
    keyring_dir: Option<PathBuf>,
}

impl SystemAuthWorld {
    /// Keep DBUS_COOKIE_SHA1 keyrings in `dir` instead of `~user/.dbus-keyrings`.
    pub fn with_keyring_dir(dir: PathBuf) -> Self {
        SystemAuthWorld {
            keyring_dir: Some(dir),
        }
    }
}

impl AuthWorld for SystemAuthWorld {
    fn random(&mut self, buf: &mut [u8]) -> bool {
        crate::sys::getrandom(buf).is_ok()
    }

    fn uid_by_name(&mut self, name: &str) -> Option<u32> {
        if name.contains('\0') {
            return None;
        }
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Some(u.uid.as_raw()),
            _ => None,
        }
    }

    fn cookie(&mut self, uid: u32, context: &str) -> Option<CookieSecret> {
        // Only the daemon's own keyring is readable in a meaningful way (it is private to
        // its owner), and refusing others keeps a root daemon out of users' home dirs.
        if uid != nix::unistd::geteuid().as_raw() {
            return None;
        }
        let dir = match &self.keyring_dir {
            Some(d) => d.clone(),
            None => match home_of(uid) {
                Some(home) => home.join(".dbus-keyrings"),
                None => {
                    log::info!("DBUS_COOKIE_SHA1: no home directory for uid {uid}");
                    return None;
                }
            },
        };
        match keyring::current_cookie(&dir, context, uid, unix_now()) {
            Ok(c) => Some(CookieSecret {
                id: c.id,
                hex: c.hex,
            }),
            Err(why) => {
                // Info, as every authentication failure: clients can cause it at will.
                log::info!("DBUS_COOKIE_SHA1 keyring {}: {why}", dir.display());
                None
            }
        }
    }
}

/// The home directory holding `uid`'s keyring. For the process's own user (real and
/// effective) it is `$HOME` when set, as libdbus does on both ends of DBUS_COOKIE_SHA1: a
/// client and a bus started with the same `HOME` share the keyring, whatever the user
/// database says. Otherwise the user database's entry.
fn home_of(uid: u32) -> Option<PathBuf> {
    let own = uid == nix::unistd::getuid().as_raw() && uid == nix::unistd::geteuid().as_raw();
    if own {
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return Some(PathBuf::from(home));
        }
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => Some(u.dir),
        _ => None,
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// A new server GUID (specification, "UUIDs"): 96 random bits and the current time.
pub fn new_guid() -> String {
    let mut random = [0u8; 12];
    if crate::sys::getrandom(&mut random).is_err() {
        // A GUID only has to be unique, not secret: derive it from whatever varies.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32) ^ n;
        for chunk in random.chunks_mut(8) {
            // SplitMix64 steps spread the few varying bits over all output bytes.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or(&bytes));
        }
    }
    crate::wire::auth::new_guid(&random, u64::try_from(unix_now()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::tests::TempDir;
    use crate::wire::auth::{
        cookie_digest, hex_decode, hex_encode, AuthConfig, AuthStatus, Authenticator,
    };

    fn hex(s: &[u8]) -> String {
        let mut h = String::new();
        hex_encode(s, &mut h);
        h
    }

    fn feed(a: &mut Authenticator, w: &mut SystemAuthWorld, input: &[u8]) -> String {
        let mut out = Vec::new();
        let (_, st) = a.feed(input, &mut out, w);
        assert!(!matches!(st, AuthStatus::Failed(_)), "{st:?}");
        String::from_utf8(out).unwrap()
    }

    fn tcp() -> Authenticator {
        Authenticator::new(AuthConfig {
            mechanisms: Default::default(),
            unix_fd_capable: false,
            peer_uid: None,
            guid: "0123456789abcdef0123456789abcdef".into(),
            nonce: None,
        })
    }

    const REJECTED: &str = "REJECTED EXTERNAL DBUS_COOKIE_SHA1 ANONYMOUS\r\n";

    #[test]
    fn cookie_sha1_against_the_real_keyring() {
        let uid = nix::unistd::geteuid().as_raw();
        let tmp = TempDir::new("world");
        let dir = tmp.keyrings();
        let mut w = SystemAuthWorld::with_keyring_dir(dir.clone());
        let mut a = tcp();
        let out = feed(
            &mut a,
            &mut w,
            format!(
                "\0AUTH DBUS_COOKIE_SHA1 {}\r\n",
                hex(uid.to_string().as_bytes())
            )
            .as_bytes(),
        );
        let data = out
            .strip_prefix("DATA ")
            .and_then(|s| s.strip_suffix("\r\n"))
            .unwrap();
        let text = String::from_utf8(hex_decode(data).unwrap()).unwrap();
        let [ctx, id, challenge]: [&str; 3] =
            text.split(' ').collect::<Vec<_>>().try_into().unwrap();
        assert_eq!(ctx, "org_freedesktop_general");
        assert_eq!(challenge.len(), 64);
        let id: u32 = id.parse().unwrap();
        let stored = crate::keyring::parse(&std::fs::read_to_string(dir.join(ctx)).unwrap());
        let cookie = &stored.iter().find(|c| c.id == id).unwrap().hex;
        let digest = cookie_digest(challenge, "c0ffee", cookie);
        let resp = format!("DATA {}\r\n", hex(format!("c0ffee {digest}").as_bytes()));
        assert!(feed(&mut a, &mut w, resp.as_bytes()).starts_with("OK "));
    }

    #[test]
    fn cookie_sha1_refuses_other_users() {
        let tmp = TempDir::new("other");
        let dir = tmp.keyrings();
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 65534 { 65533 } else { 65534 };
        let mut w = SystemAuthWorld::with_keyring_dir(dir.clone());
        let mut a = tcp();
        let line = format!(
            "\0AUTH DBUS_COOKIE_SHA1 {}\r\n",
            hex(other.to_string().as_bytes())
        );
        assert_eq!(feed(&mut a, &mut w, line.as_bytes()), REJECTED);
        assert!(!dir.exists(), "nothing touched for refused users");
        assert_eq!(w.cookie(other, "org_freedesktop_general"), None);
    }

    #[test]
    fn users_by_name() {
        let mut w = SystemAuthWorld::default();
        if let Ok(Some(root)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0)) {
            assert_eq!(w.uid_by_name(&root.name), Some(0));
        }
        assert_eq!(w.uid_by_name("no-such-user-sluicebus"), None);
        assert_eq!(w.uid_by_name("ro\0ot"), None);
    }

    #[test]
    fn guids_are_fresh_and_dated() {
        let g = new_guid();
        assert_eq!(g.len(), 32);
        assert!(
            g.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{g}"
        );
        assert_ne!(g, new_guid());
        let t = u32::from_str_radix(&g[24..], 16).unwrap();
        let now = unix_now() as u32;
        assert!(now.wrapping_sub(t) < 5, "{t} vs {now}");
    }
}
