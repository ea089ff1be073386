//! The DBUS_COOKIE_SHA1 keyring: the files in `~/.dbus-keyrings` that prove a client can
//! read its user's home directory (specification, "DBUS_COOKIE_SHA1").
//!
//! One file per cookie context, one cookie per line (`<id> <unix-time> <hex-secret>`),
//! maintained as libdbus does: a private directory, a `<context>.lock` file taken by
//! exclusive creation, expiry of old cookies, and atomic replacement on write.

use crate::wire::auth::{hex_decode, hex_encode};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Add a cookie when the newest one is older than this.
const NEW_COOKIE_AFTER: i64 = 5 * 60;
/// Drop cookies older than this.
const EXPIRE_AFTER: i64 = 7 * 60;
/// Drop cookies dated further ahead than this (a clock once set wrong).
const MAX_FUTURE: i64 = 5 * 60;
/// Ignore keyring lines past this many (libdbus does the same).
const MAX_COOKIES: usize = 256;
/// Keyring files are tiny; refuse to slurp something huge.
const MAX_FILE: u64 = 1 << 20;
/// A lock file older than this was left by a crashed process.
const STALE_LOCK_SECS: u64 = 10;

/// One keyring line: `<id> <unix-time> <hex-cookie>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    /// The id the server names in its challenge.
    pub id: u32,
    /// When the cookie was made (Unix time).
    pub created: i64,
    /// Lower-case hex, exactly as it goes into the hash.
    pub hex: String,
}

/// Removes the lock file when dropped, so every exit path unlocks.
struct Lock(PathBuf);

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn lock(dir: &Path, context: &str) -> Option<Lock> {
    let path = dir.join(format!("{context}.lock"));
    for attempt in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => return Some(Lock(path)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt == 0 => {
                // The reactor must not sleep waiting for another process, so only a lock
                // that is clearly abandoned is broken; otherwise work read-only.
                let stale = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() >= STALE_LOCK_SECS);
                if !stale || fs::remove_file(&path).is_err() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// Parse a keyring file, skipping malformed lines as libdbus does.
pub fn parse(text: &str) -> Vec<Cookie> {
    let mut cookies: Vec<Cookie> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(id), Some(created), Some(hex), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(id), Ok(created)) = (id.parse::<u32>(), created.parse::<i64>()) else {
            continue;
        };
        let Some(secret) = hex_decode(hex).filter(|s| !s.is_empty()) else {
            continue;
        };
        if id > i32::MAX as u32 || cookies.iter().any(|c| c.id == id) {
            continue;
        }
        let mut hex = String::with_capacity(secret.len() * 2);
        hex_encode(&secret, &mut hex);
        cookies.push(Cookie { id, created, hex });
        if cookies.len() >= MAX_COOKIES {
            break;
        }
    }
    cookies
}

fn ensure_private_dir(dir: &Path, uid: u32) -> Result<(), &'static str> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(_) => return Err("cannot create keyring directory"),
    }
    let meta = fs::metadata(dir).map_err(|_| "cannot stat keyring directory")?;
    if !meta.is_dir() {
        return Err("keyring path is not a directory");
    }
    if meta.uid() != uid {
        return Err("keyring directory has the wrong owner");
    }
    // Others able to read the cookies could authenticate as this user.
    if meta.mode() & 0o066 != 0 {
        return Err("keyring directory is accessible to others");
    }
    Ok(())
}

fn load(file: &Path) -> Result<Vec<Cookie>, &'static str> {
    let mut text = String::new();
    match fs::File::open(file) {
        Ok(f) => {
            f.take(MAX_FILE)
                .read_to_string(&mut text)
                .map_err(|_| "cannot read keyring")?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) => return Err("cannot open keyring"),
    }
    Ok(parse(&text))
}

fn save(dir: &Path, file: &Path, context: &str, cookies: &[Cookie]) -> Result<(), &'static str> {
    let mut text = String::new();
    for c in cookies {
        text.push_str(&format!("{} {} {}\n", c.id, c.created, c.hex));
    }
    let mut tag = [0u8; 6];
    crate::sys::getrandom(&mut tag).map_err(|_| "no randomness")?;
    let mut tmp_name = format!("{context}.");
    hex_encode(&tag, &mut tmp_name);
    tmp_name.push_str(".tmp");
    let tmp = dir.join(tmp_name);
    // Write a fresh file and rename it over the old one so readers never see a torn file.
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, file));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return Err("cannot write keyring");
    }
    Ok(())
}

/// Load `dir/<context>` (creating `dir` private to `uid` if needed), expire old cookies, add
/// a fresh one if needed, and return the cookie to challenge the client with. `now` is the
/// Unix time. Without the lock (another process holds it) the keyring is only read.
pub fn current_cookie(
    dir: &Path,
    context: &str,
    uid: u32,
    now: i64,
) -> Result<Cookie, &'static str> {
    ensure_private_dir(dir, uid)?;
    let file = dir.join(context);
    let lock = lock(dir, context);
    let mut cookies = load(&file)?;
    let before = cookies.len();
    cookies.retain(|c| {
        now.saturating_sub(c.created) <= EXPIRE_AFTER && c.created.saturating_sub(now) <= MAX_FUTURE
    });
    let mut changed = cookies.len() != before;
    let recent = cookies
        .iter()
        .filter(|c| now.saturating_sub(c.created) < NEW_COOKIE_AFTER)
        .max_by_key(|c| c.created)
        .cloned();
    let cookie = match recent {
        Some(c) => c,
        None => {
            if lock.is_none() {
                return Err("keyring is locked by another process and has no fresh cookie");
            }
            let mut raw = [0u8; 4];
            let id = loop {
                crate::sys::getrandom(&mut raw).map_err(|_| "no randomness")?;
                let id = u32::from_ne_bytes(raw) & 0x7fff_ffff;
                if !cookies.iter().any(|c| c.id == id) {
                    break id;
                }
            };
            let mut secret = [0u8; 24];
            crate::sys::getrandom(&mut secret).map_err(|_| "no randomness")?;
            let mut hex = String::with_capacity(48);
            hex_encode(&secret, &mut hex);
            let c = Cookie {
                id,
                created: now,
                hex,
            };
            cookies.push(c.clone());
            changed = true;
            c
        }
    };
    if changed && lock.is_some() {
        save(dir, &file, context, &cookies)?;
    }
    drop(lock);
    Ok(cookie)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::auth::COOKIE_CONTEXT as CONTEXT;
    use std::os::unix::fs::PermissionsExt;

    /// A directory removed at the end of the test.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            let mut r = [0u8; 8];
            crate::sys::getrandom(&mut r).unwrap();
            let mut name = format!("sluicebus-keyring-{tag}-");
            hex_encode(&r, &mut name);
            let p = std::env::temp_dir().join(name);
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }

        /// Where the keyring directory goes (not created).
        pub(crate) fn keyrings(&self) -> PathBuf {
            self.0.join(".dbus-keyrings")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn private_dir(tmp: &TempDir) -> PathBuf {
        let dir = tmp.keyrings();
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn on_disk(dir: &Path) -> Vec<Cookie> {
        parse(&fs::read_to_string(dir.join(CONTEXT)).unwrap())
    }

    #[test]
    fn creates_a_private_keyring() {
        let tmp = TempDir::new("create");
        let dir = tmp.keyrings();
        let now = crate::auth_world::unix_now();
        let c = current_cookie(&dir, CONTEXT, me(), now).unwrap();
        assert_eq!((c.created, c.hex.len()), (now, 48));
        assert!(c.id <= i32::MAX as u32);
        let dmeta = fs::metadata(&dir).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        let fmeta = fs::metadata(dir.join(CONTEXT)).unwrap();
        assert_eq!(fmeta.permissions().mode() & 0o777, 0o600);
        assert!(!dir.join(format!("{CONTEXT}.lock")).exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp files left");
        assert_eq!(on_disk(&dir), std::slice::from_ref(&c));
        // Still fresh a minute later: reused.
        assert_eq!(current_cookie(&dir, CONTEXT, me(), now + 60).unwrap(), c);
    }

    #[test]
    fn expiry_and_future() {
        let tmp = TempDir::new("expiry");
        let dir = private_dir(&tmp);
        let now = crate::auth_world::unix_now();
        let text = format!(
            "1 {} aaaa\n2 {} bbbb\n3 {} CCCC\ngarbage line\n4 x dddd\n5 {} zz\n3 {} eeee\n",
            now - 1000,
            now + 1000,
            now - 10,
            now,
            now
        );
        fs::write(dir.join(CONTEXT), text).unwrap();
        let c = current_cookie(&dir, CONTEXT, me(), now).unwrap();
        assert_eq!((c.id, c.hex.as_str()), (3, "cccc"));
        let after = on_disk(&dir);
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].hex, "cccc");

        // Only an aging cookie (6 min): a new one is added, the old one kept until expiry.
        fs::write(dir.join(CONTEXT), format!("9 {} abcd\n", now - 360)).unwrap();
        let c = current_cookie(&dir, CONTEXT, me(), now).unwrap();
        assert_ne!(c.id, 9);
        assert_eq!(on_disk(&dir).len(), 2);
    }

    #[test]
    fn locking() {
        let tmp = TempDir::new("lock");
        let dir = private_dir(&tmp);
        let lock = dir.join(format!("{CONTEXT}.lock"));
        fs::write(&lock, b"").unwrap();
        let now = crate::auth_world::unix_now();

        // Fresh lock and no usable cookie: cannot add one.
        assert!(current_cookie(&dir, CONTEXT, me(), now).is_err());
        assert!(lock.exists(), "someone else's lock is left alone");

        // Fresh lock but a fresh cookie: read-only use works.
        fs::write(dir.join(CONTEXT), format!("12 {now} 00ff\n")).unwrap();
        let c = current_cookie(&dir, CONTEXT, me(), now).unwrap();
        assert_eq!((c.id, c.hex.as_str()), (12, "00ff"));
        assert!(lock.exists());

        // A stale lock is broken and the keyring maintained.
        fs::write(dir.join(CONTEXT), b"").unwrap();
        let old = nix::sys::time::TimeVal::new(now - 60, 0);
        nix::sys::stat::utimes(&lock, &old, &old).unwrap();
        let c = current_cookie(&dir, CONTEXT, me(), now).unwrap();
        assert!(!lock.exists());
        assert_eq!(on_disk(&dir), [c]);
    }

    #[test]
    fn must_be_private() {
        let tmp = TempDir::new("perm");
        let dir = tmp.keyrings();
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let now = crate::auth_world::unix_now();
        assert!(current_cookie(&dir, CONTEXT, me(), now).is_err());
        assert!(!dir.join(CONTEXT).exists());
        // Somebody else's directory.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let other = if me() == 65534 { 65533 } else { 65534 };
        assert!(current_cookie(&dir, CONTEXT, other, now).is_err());
        // A file where the directory should be.
        let tmp2 = TempDir::new("perm2");
        fs::write(tmp2.keyrings(), b"x").unwrap();
        assert!(current_cookie(&tmp2.keyrings(), CONTEXT, me(), now).is_err());
    }

    #[test]
    fn parse_skips_malformed_lines() {
        let text = "1 5 AbCd\n1 6 ffff\n2 7\n3 8 abc\n4 9 0a extra\n2147483648 1 00\n5 -3 0a\n";
        let got = parse(text);
        let want = [
            Cookie {
                id: 1,
                created: 5,
                hex: "abcd".into(),
            },
            Cookie {
                id: 5,
                created: -3,
                hex: "0a".into(),
            },
        ];
        assert_eq!(got, want);
    }
}
