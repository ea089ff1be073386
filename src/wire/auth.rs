//! SASL authentication, server side (D-Bus specification "Authentication Protocol";
//! bus.md §2).
//!
//! [`Authenticator`] is a sans-IO state machine: the reactor hands it the bytes read so far
//! and writes out whatever it appends to the reply buffer. The only I/O it ever does itself
//! is the user-database lookup for non-numeric EXTERNAL identities and the cookie keyring of
//! DBUS_COOKIE_SHA1; both happen only when a client asks for them.

use std::path::{Path, PathBuf};

/// Longest auth line accepted, CRLF included (dbus-auth.c keeps 16 KiB of pending input).
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// The connection is dropped when it has been sent this many `REJECTED` lines.
pub const MAX_REJECTIONS: u32 = 6;

/// A SASL mechanism the server can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `EXTERNAL`: identity from the socket credentials (`SO_PEERCRED`).
    External,
    /// `DBUS_COOKIE_SHA1`: proof of read access to the user's `~/.dbus-keyrings`.
    CookieSha1,
    /// `ANONYMOUS`: no identity at all.
    Anonymous,
}

impl Mechanism {
    /// Every known mechanism, in the order dbus-daemon lists them in `REJECTED`.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::External,
        Mechanism::CookieSha1,
        Mechanism::Anonymous,
    ];

    /// The SASL name as it appears on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::External => "EXTERNAL",
            Mechanism::CookieSha1 => "DBUS_COOKIE_SHA1",
            Mechanism::Anonymous => "ANONYMOUS",
        }
    }

    /// Look a mechanism up by its wire name (case-sensitive, as SASL names are).
    pub fn parse(s: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Per-connection authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Allowed mechanisms, in the order `REJECTED` lists them; empty means all three.
    pub mechanisms: Vec<Mechanism>,
    /// The socket is `AF_UNIX`, so `NEGOTIATE_UNIX_FD` may be agreed to.
    pub unix_fd_capable: bool,
    /// The peer's uid from `SO_PEERCRED`; `None` on TCP (EXTERNAL is then rejected).
    pub peer_uid: Option<u32>,
    /// The listening address's GUID, sent in `OK`.
    pub guid: String,
}

/// What [`Authenticator::feed`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStatus {
    /// No decision yet; feed more bytes once they arrive.
    NeedMore,
    /// The client sent `BEGIN` after `OK`; bytes after the consumed count are D-Bus messages.
    Authenticated(AuthOutcome),
    /// Close the connection. Anything already appended to the reply buffer may be sent
    /// first (best effort); the text is for the log.
    Failed(&'static str),
}

/// The result of a successful authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthOutcome {
    /// The authenticated uid; `None` for ANONYMOUS.
    pub uid: Option<u32>,
    /// `AGREE_UNIX_FD` was sent: fds may be passed both ways.
    pub unix_fd: bool,
    /// Authenticated with ANONYMOUS (policy must still allow anonymous connections).
    pub anonymous: bool,
}

/// A running mechanism that waits for the client's `DATA`.
#[derive(Debug)]
enum Conversation {
    /// EXTERNAL after an empty `DATA` challenge.
    External,
    /// DBUS_COOKIE_SHA1 after the server challenge was sent.
    CookieSha1(Box<CookieChallenge>),
}

/// What the server needs to verify a DBUS_COOKIE_SHA1 response.
#[derive(Debug)]
struct CookieChallenge {
    uid: u32,
    cookie_hex: String,
    server_challenge: String,
}

#[derive(Debug)]
enum State {
    /// Before the credentials byte.
    WaitingForNul,
    WaitingForAuth,
    WaitingForData(Conversation),
    WaitingForBegin {
        uid: Option<u32>,
        anonymous: bool,
        unix_fd: bool,
    },
    Authenticated(AuthOutcome),
    Failed(&'static str),
}

/// Server side of the SASL conversation for one connection.
#[derive(Debug)]
pub struct Authenticator {
    mechanisms: Vec<Mechanism>,
    /// Precomputed `REJECTED …\r\n`: it never changes for a connection.
    rejected_line: Vec<u8>,
    unix_fd_capable: bool,
    peer_uid: Option<u32>,
    guid: String,
    keyring_dir: Option<PathBuf>,
    state: State,
    rejections: u32,
    /// Bytes at the start of the pending (unconsumed) input already known to hold no CRLF,
    /// so byte-by-byte delivery does not rescan the whole line each time.
    scanned: usize,
}

impl Authenticator {
    /// A fresh authenticator waiting for the credentials byte.
    pub fn new(cfg: AuthConfig) -> Self {
        let mut mechanisms: Vec<Mechanism> = Vec::with_capacity(3);
        let wanted = if cfg.mechanisms.is_empty() {
            &Mechanism::ALL[..]
        } else {
            &cfg.mechanisms[..]
        };
        for m in wanted {
            if !mechanisms.contains(m) {
                mechanisms.push(*m);
            }
        }
        let mut rejected_line = b"REJECTED".to_vec();
        for m in &mechanisms {
            rejected_line.push(b' ');
            rejected_line.extend_from_slice(m.name().as_bytes());
        }
        rejected_line.extend_from_slice(b"\r\n");
        Authenticator {
            mechanisms,
            rejected_line,
            unix_fd_capable: cfg.unix_fd_capable,
            peer_uid: cfg.peer_uid,
            guid: cfg.guid,
            keyring_dir: None,
            state: State::WaitingForNul,
            rejections: 0,
            scanned: 0,
        }
    }

    /// Use `dir` instead of `~user/.dbus-keyrings` for DBUS_COOKIE_SHA1 (tests, odd setups).
    pub fn with_keyring_dir(mut self, dir: PathBuf) -> Self {
        self.keyring_dir = Some(dir);
        self
    }

    /// Consume as many complete lines as possible from `input`, appending server replies to
    /// `out`. Returns (bytes consumed, status). On BEGIN it stops right after "BEGIN\r\n" so
    /// the caller hands the rest of the buffer (the first message) to the message parser.
    ///
    /// The caller must keep the unconsumed bytes and pass them again, unchanged, at the start
    /// of `input` on the next call. Once `Authenticated` or `Failed` is returned, every later
    /// call returns the same status and consumes nothing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, AuthStatus) {
        let mut pos = 0usize;
        if let State::WaitingForNul = self.state {
            match input.first() {
                None => return (0, AuthStatus::NeedMore),
                Some(0) => {
                    pos = 1;
                    self.state = State::WaitingForAuth;
                    self.scanned = 0;
                }
                Some(_) => {
                    self.state = State::Failed("first byte is not NUL");
                }
            }
        }
        loop {
            match self.state {
                State::Authenticated(o) => return (pos, AuthStatus::Authenticated(o)),
                State::Failed(why) => return (pos, AuthStatus::Failed(why)),
                _ => {}
            }
            let rest = input.get(pos..).unwrap_or(&[]);
            // A CR may already have been seen as the last scanned byte: look one back.
            let from = self.scanned.min(rest.len()).saturating_sub(1);
            match find_crlf(rest, from) {
                None => {
                    if rest.len() >= MAX_LINE_LEN {
                        self.state = State::Failed("auth line too long");
                        continue;
                    }
                    self.scanned = rest.len();
                    return (pos, AuthStatus::NeedMore);
                }
                Some(eol) => {
                    self.scanned = 0;
                    if eol.saturating_add(2) > MAX_LINE_LEN {
                        self.state = State::Failed("auth line too long");
                        continue;
                    }
                    pos = pos.saturating_add(eol).saturating_add(2);
                    self.handle_line(rest.get(..eol).unwrap_or(&[]), out);
                }
            }
        }
    }

    fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        // dbus-auth.c refuses NUL and bytes with the high bit set, but keeps the connection.
        if line.iter().any(|&b| b == 0 || !b.is_ascii()) {
            return send_error(out, "Command contained non-ASCII");
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return send_error(out, "Command contained non-ASCII");
        };
        let (cmd, args) = split_word(line);
        match cmd {
            "AUTH" => self.on_auth(args, out),
            "DATA" => self.on_data(args, out),
            "CANCEL" => match self.state {
                State::WaitingForAuth => send_error(out, "No authentication in progress"),
                _ => self.reject(out),
            },
            "ERROR" => self.reject(out),
            "BEGIN" => match self.state {
                State::WaitingForBegin {
                    uid,
                    anonymous,
                    unix_fd,
                } => {
                    self.state = State::Authenticated(AuthOutcome {
                        uid,
                        unix_fd,
                        anonymous,
                    })
                }
                _ => self.state = State::Failed("BEGIN before authentication"),
            },
            "NEGOTIATE_UNIX_FD" => match &mut self.state {
                State::WaitingForBegin { unix_fd, .. } => {
                    if self.unix_fd_capable {
                        *unix_fd = true;
                        out.extend_from_slice(b"AGREE_UNIX_FD\r\n");
                    } else {
                        send_error(out, "Unix fd passing is not supported on this transport");
                    }
                }
                _ => send_error(out, "Need to authenticate first"),
            },
            c if c.starts_with("EXTENSION_") => send_error(out, "Unsupported extension"),
            _ => send_error(out, "Unknown command"),
        }
    }

    fn on_auth(&mut self, args: &str, out: &mut Vec<u8>) {
        match self.state {
            State::WaitingForAuth => {}
            State::WaitingForData(_) => {
                return send_error(out, "Sent AUTH while another AUTH in progress")
            }
            _ => return send_error(out, "Already authenticated"),
        }
        if args.is_empty() {
            return self.reject(out);
        }
        let (mech, hex) = split_word(args);
        let Some(initial) = hex_decode(hex) else {
            return send_error(out, "Invalid hex encoding");
        };
        match Mechanism::parse(mech).filter(|m| self.mechanisms.contains(m)) {
            None => self.reject(out),
            Some(Mechanism::External) => {
                if self.peer_uid.is_none() {
                    // No socket credentials (TCP): nothing to vouch for the identity.
                    self.reject(out)
                } else if initial.is_empty() {
                    out.extend_from_slice(b"DATA\r\n");
                    self.state = State::WaitingForData(Conversation::External);
                } else {
                    self.external_identity(&initial, out)
                }
            }
            Some(Mechanism::Anonymous) => {
                // The optional trace string carries no authority, so it is ignored.
                self.accept(None, true, out)
            }
            Some(Mechanism::CookieSha1) => self.cookie_start(&initial, out),
        }
    }

    fn on_data(&mut self, args: &str, out: &mut Vec<u8>) {
        let State::WaitingForData(conv) = &self.state else {
            return send_error(out, "No authentication conversation in progress");
        };
        let Some(data) = hex_decode(args) else {
            return send_error(out, "Invalid hex encoding");
        };
        match conv {
            Conversation::External => {
                if data.is_empty() {
                    // "Use my socket credentials."
                    self.accept(self.peer_uid, false, out)
                } else {
                    self.external_identity(&data, out)
                }
            }
            Conversation::CookieSha1(ch) => {
                let uid = ch.uid;
                if cookie_response_ok(ch, &data) {
                    self.accept(Some(uid), false, out)
                } else {
                    self.reject(out)
                }
            }
        }
    }

    /// EXTERNAL with an explicit identity: it must name the socket's uid.
    fn external_identity(&mut self, identity: &[u8], out: &mut Vec<u8>) {
        match self.peer_uid {
            Some(peer) if resolve_identity(identity) == Some(peer) => {
                self.accept(Some(peer), false, out)
            }
            _ => self.reject(out),
        }
    }

    fn cookie_start(&mut self, username: &[u8], out: &mut Vec<u8>) {
        let Some(uid) = resolve_identity(username) else {
            return self.reject(out);
        };
        // Only the daemon's own keyring is readable in a meaningful way (it is private to
        // its owner), and refusing others keeps a root daemon out of users' home dirs.
        if uid != nix::unistd::geteuid().as_raw() {
            return self.reject(out);
        }
        let dir = match &self.keyring_dir {
            Some(d) => d.clone(),
            None => match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(u)) => u.dir.join(".dbus-keyrings"),
                _ => return self.reject(out),
            },
        };
        let cookie = match keyring::current_cookie(&dir, uid, unix_now()) {
            Ok(c) => c,
            Err(why) => {
                log::warn!("DBUS_COOKIE_SHA1 keyring {}: {why}", dir.display());
                return self.reject(out);
            }
        };
        let mut raw = [0u8; 32];
        if random_bytes(&mut raw).is_err() {
            return self.reject(out);
        }
        let mut server_challenge = String::with_capacity(64);
        hex_encode(&raw, &mut server_challenge);
        let challenge = format!("{} {} {}", keyring::CONTEXT, cookie.id, server_challenge);
        out.extend_from_slice(b"DATA ");
        let mut hex = String::with_capacity(challenge.len() * 2);
        hex_encode(challenge.as_bytes(), &mut hex);
        out.extend_from_slice(hex.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.state = State::WaitingForData(Conversation::CookieSha1(Box::new(CookieChallenge {
            uid,
            cookie_hex: cookie.hex,
            server_challenge,
        })));
    }

    fn accept(&mut self, uid: Option<u32>, anonymous: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"OK ");
        out.extend_from_slice(self.guid.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.state = State::WaitingForBegin {
            uid,
            anonymous,
            unix_fd: false,
        };
    }

    /// Send `REJECTED`, go back to the initial state, and give up after too many tries.
    fn reject(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rejected_line);
        self.rejections = self.rejections.saturating_add(1);
        self.state = if self.rejections >= MAX_REJECTIONS {
            State::Failed("too many failed authentication attempts")
        } else {
            State::WaitingForAuth
        };
    }
}

fn send_error(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"ERROR \"");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\"\r\n");
}

/// Offset of the first "\r\n" in `buf` at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .and_then(|p| p.checked_add(from))
}

/// Split off the first blank-separated word; the rest loses surrounding blanks.
fn split_word(s: &str) -> (&str, &str) {
    const BLANKS: [char; 2] = [' ', '\t'];
    match s.split_once(BLANKS) {
        Some((word, rest)) => (
            word,
            rest.trim_start_matches(BLANKS).trim_end_matches(BLANKS),
        ),
        None => (s, ""),
    }
}

/// Decode SASL hex (either case); `None` on odd length or a non-hex character.
fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks_exact(2)
        .map(|pair| match pair {
            [h, l] => Some(super::hex_val(*h)? << 4 | super::hex_val(*l)?),
            _ => None,
        })
        .collect()
}

fn hex_encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        super::push_hex(out, b);
    }
}

/// Map a SASL identity (decimal uid, or a login name) to a uid.
fn resolve_identity(id: &[u8]) -> Option<u32> {
    if id.is_empty() {
        return None;
    }
    if id.iter().all(u8::is_ascii_digit) {
        let uid: u32 = std::str::from_utf8(id).ok()?.parse().ok()?;
        // (uid_t)-1 means "no uid" to the kernel and to libdbus.
        return (uid != u32::MAX).then_some(uid);
    }
    let name = std::str::from_utf8(id).ok()?;
    if name.contains('\0') {
        return None;
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Some(u.uid.as_raw()),
        _ => None,
    }
}

/// Check `DATA hex("<client-challenge> <sha1hex>")` against the stored challenge.
fn cookie_response_ok(ch: &CookieChallenge, data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Some((client_challenge, their_hash)) = text.split_once(' ') else {
        return false;
    };
    if client_challenge.is_empty() || their_hash.len() != 40 {
        return false;
    }
    let mut input = String::with_capacity(
        ch.server_challenge.len() + client_challenge.len() + ch.cookie_hex.len() + 2,
    );
    input.push_str(&ch.server_challenge);
    input.push(':');
    input.push_str(client_challenge);
    input.push(':');
    input.push_str(&ch.cookie_hex);
    let mut ours = String::with_capacity(40);
    hex_encode(&sha1(input.as_bytes()), &mut ours);
    // Compare without an early exit so timing does not leak how much of the hash matched.
    ours.bytes()
        .zip(their_hash.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
        == 0
}

fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Fill `buf` from the kernel's CSPRNG.
fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    crate::sys::getrandom(buf)
}

/// A new server GUID: 32 lowercase hex digits, 96 random bits followed by the 32-bit
/// big-endian Unix time (specification, "UUIDs").
pub fn new_guid() -> String {
    let mut raw = [0u8; 16];
    if random_bytes(&mut raw[..12]).is_err() {
        // A GUID only has to be unique, not secret: derive it from whatever varies.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut seed = Vec::with_capacity(32);
        seed.extend_from_slice(&nanos.to_le_bytes());
        seed.extend_from_slice(&std::process::id().to_le_bytes());
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        seed.extend_from_slice(&n.to_le_bytes());
        let digest = sha1(&seed);
        raw[..12].copy_from_slice(&digest[..12]);
    }
    // Truncation to 32 bits is what the specification's UUID layout calls for.
    raw[12..].copy_from_slice(&(unix_now() as u32).to_be_bytes());
    let mut s = String::with_capacity(32);
    hex_encode(&raw, &mut s);
    s
}

/// SHA-1 (FIPS 180-4). Used only for DBUS_COOKIE_SHA1, whose protocol fixes the algorithm.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        sha1_block(&mut h, block);
    }
    let rem = blocks.remainder();
    // Padding: 0x80, zeros, then the message length in bits; one or two final blocks.
    let mut tail = [0u8; 128];
    let tail_len = if rem.len() < 56 { 64 } else { 128 };
    tail[..rem.len()].copy_from_slice(rem);
    tail[rem.len()] = 0x80;
    let bits = (data.len() as u64).wrapping_mul(8);
    tail[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
    for block in tail[..tail_len].chunks_exact(64) {
        sha1_block(&mut h, block);
    }
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn sha1_block(h: &mut [u32; 5], block: &[u8]) {
    let mut w = [0u32; 80];
    for (wi, c) in w.iter_mut().zip(block.chunks_exact(4)) {
        *wi = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    }
    for i in 16..80 {
        w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
    }
    let [mut a, mut b, mut c, mut d, mut e] = *h;
    for (i, wi) in w.iter().enumerate() {
        let (f, k) = match i {
            0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
            20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
            40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
            _ => (b ^ c ^ d, 0xCA62_C1D6),
        };
        let t = a
            .rotate_left(5)
            .wrapping_add(f)
            .wrapping_add(e)
            .wrapping_add(k)
            .wrapping_add(*wi);
        e = d;
        d = c;
        c = b.rotate_left(30);
        b = a;
        a = t;
    }
    for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
        *hi = hi.wrapping_add(v);
    }
}

/// The DBUS_COOKIE_SHA1 keyring (specification, "DBUS_COOKIE_SHA1"; bus.md §2.4).
mod keyring {
    use super::{hex_decode, hex_encode, random_bytes, Path};
    use std::fs;
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};

    /// The only cookie context the bus uses.
    pub(super) const CONTEXT: &str = "org_freedesktop_general";
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
    pub(super) struct Cookie {
        pub id: u32,
        pub created: i64,
        /// Lower-case hex, exactly as it goes into the hash.
        pub hex: String,
    }

    /// Removes the lock file when dropped, so every exit path unlocks.
    struct Lock(std::path::PathBuf);
    impl Drop for Lock {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    fn lock(dir: &Path) -> Option<Lock> {
        let path = dir.join(format!("{CONTEXT}.lock"));
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
    pub(super) fn parse(text: &str) -> Vec<Cookie> {
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

    fn save(dir: &Path, file: &Path, cookies: &[Cookie]) -> Result<(), &'static str> {
        let mut text = String::new();
        for c in cookies {
            text.push_str(&format!("{} {} {}\n", c.id, c.created, c.hex));
        }
        let mut tag = [0u8; 6];
        random_bytes(&mut tag).map_err(|_| "no randomness")?;
        let mut tmp_name = format!("{CONTEXT}.");
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

    /// Load `dir/<CONTEXT>`, expire old cookies, add a fresh one if needed, and return the
    /// cookie to challenge the client with.
    pub(super) fn current_cookie(dir: &Path, uid: u32, now: i64) -> Result<Cookie, &'static str> {
        ensure_private_dir(dir, uid)?;
        let file = dir.join(CONTEXT);
        let lock = lock(dir);
        let mut cookies = load(&file)?;
        let before = cookies.len();
        cookies.retain(|c| {
            now.saturating_sub(c.created) <= EXPIRE_AFTER
                && c.created.saturating_sub(now) <= MAX_FUTURE
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
                    random_bytes(&mut raw).map_err(|_| "no randomness")?;
                    let id = u32::from_ne_bytes(raw) & 0x7fff_ffff;
                    if !cookies.iter().any(|c| c.id == id) {
                        break id;
                    }
                };
                let mut secret = [0u8; 24];
                random_bytes(&mut secret).map_err(|_| "no randomness")?;
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
            save(dir, &file, &cookies)?;
        }
        drop(lock);
        Ok(cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GUID: &str = "0123456789abcdef0123456789abcdef";
    const HELLO: &[u8] = b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x6d\x00\x00\x00";

    fn unix_cfg(uid: u32) -> AuthConfig {
        AuthConfig {
            mechanisms: Vec::new(),
            unix_fd_capable: true,
            peer_uid: Some(uid),
            guid: GUID.into(),
        }
    }

    fn tcp_cfg(mechanisms: Vec<Mechanism>) -> AuthConfig {
        AuthConfig {
            mechanisms,
            unix_fd_capable: false,
            peer_uid: None,
            guid: GUID.into(),
        }
    }

    fn hex(s: &[u8]) -> String {
        let mut h = String::new();
        hex_encode(s, &mut h);
        h
    }

    /// One feed call; returns (consumed, status, replies as text).
    fn feed(a: &mut Authenticator, input: &[u8]) -> (usize, AuthStatus, String) {
        let mut out = Vec::new();
        let (n, st) = a.feed(input, &mut out);
        (n, st, String::from_utf8(out).unwrap())
    }

    /// Drives `a` like the reactor: a buffer that receives `chunks` one at a time and loses
    /// whatever was consumed. Returns the final status, all replies, and the leftover buffer.
    fn drive(a: &mut Authenticator, chunks: &[&[u8]]) -> (AuthStatus, String, Vec<u8>) {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut st = AuthStatus::NeedMore;
        for c in chunks {
            buf.extend_from_slice(c);
            let (n, s) = a.feed(&buf, &mut out);
            buf.drain(..n);
            st = s;
            if st != AuthStatus::NeedMore {
                break;
            }
        }
        (st, String::from_utf8(out).unwrap(), buf)
    }

    fn ok_line() -> String {
        format!("OK {GUID}\r\n")
    }

    const ALL_REJECTED: &str = "REJECTED EXTERNAL DBUS_COOKIE_SHA1 ANONYMOUS\r\n";

    fn authed(uid: Option<u32>, unix_fd: bool, anonymous: bool) -> AuthStatus {
        AuthStatus::Authenticated(AuthOutcome {
            uid,
            unix_fd,
            anonymous,
        })
    }

    #[test]
    fn mechanism_names() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::parse(m.name()), Some(m));
        }
        assert_eq!(Mechanism::parse("external"), None);
        assert_eq!(Mechanism::parse("EXTERNAL "), None);
        assert_eq!(Mechanism::parse(""), None);
        assert_eq!(Mechanism::CookieSha1.name(), "DBUS_COOKIE_SHA1");
    }

    #[test]
    fn sd_bus_fully_pipelined_stops_at_binary() {
        let mut a = Authenticator::new(unix_cfg(1000));
        let head = b"\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(HELLO);
        let (n, st, out) = feed(&mut a, &input);
        assert_eq!(n, head.len());
        assert_eq!(&input[n..], HELLO);
        assert_eq!(st, authed(Some(1000), true, false));
        assert_eq!(out, format!("{}AGREE_UNIX_FD\r\n", ok_line()));
        // Later calls neither consume nor change their mind.
        let (n, st, out) = feed(&mut a, HELLO);
        assert_eq!(
            (n, st, out.as_str()),
            (0, authed(Some(1000), true, false), "")
        );
    }

    #[test]
    fn sd_bus_data_dance_pipelined() {
        let mut a = Authenticator::new(unix_cfg(1000));
        let head = b"\0AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(HELLO);
        let (n, st, out) = feed(&mut a, &input);
        assert_eq!(n, head.len());
        assert_eq!(st, authed(Some(1000), true, false));
        assert_eq!(out, format!("DATA\r\n{}AGREE_UNIX_FD\r\n", ok_line()));
    }

    #[test]
    fn byte_by_byte() {
        let mut input = b"\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n".to_vec();
        input.extend_from_slice(HELLO);
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let mut a = Authenticator::new(unix_cfg(1000));
        let (st, out, rest) = drive(&mut a, &chunks);
        assert_eq!(st, authed(Some(1000), true, false));
        assert_eq!(out, format!("{}AGREE_UNIX_FD\r\n", ok_line()));
        // Authenticated right after the final '\n': nothing of the message was fed yet.
        assert!(rest.is_empty());

        // CR and LF in separate reads, with the scan hint in play.
        let mut a = Authenticator::new(unix_cfg(7));
        let (st, out, _) = drive(
            &mut a,
            &[b"\0", b"AUTH EXT", b"ERNAL 37\r", b"\nBEG", b"IN\r", b"\n"],
        );
        assert_eq!(st, authed(Some(7), false, false));
        assert_eq!(out, ok_line());
    }

    #[test]
    fn libdbus_style_separate_writes() {
        let mut a = Authenticator::new(unix_cfg(1000));
        assert_eq!(feed(&mut a, b""), (0, AuthStatus::NeedMore, String::new()));
        assert_eq!(
            feed(&mut a, b"\0"),
            (1, AuthStatus::NeedMore, String::new())
        );
        let l = b"AUTH EXTERNAL 31303030\r\n";
        assert_eq!(feed(&mut a, l), (l.len(), AuthStatus::NeedMore, ok_line()));
        let l = b"NEGOTIATE_UNIX_FD\r\n";
        assert_eq!(
            feed(&mut a, l),
            (l.len(), AuthStatus::NeedMore, "AGREE_UNIX_FD\r\n".into())
        );
        let mut l = b"BEGIN\r\n".to_vec();
        l.extend_from_slice(HELLO);
        assert_eq!(
            feed(&mut a, &l),
            (7, authed(Some(1000), true, false), String::new())
        );
    }

    #[test]
    fn gdbus_style_probe_then_external() {
        // Some clients first ask which mechanisms exist with a bare AUTH.
        let mut a = Authenticator::new(unix_cfg(1000));
        let (st, out, _) = drive(
            &mut a,
            &[
                b"\0AUTH\r\n",
                b"AUTH EXTERNAL 31303030\r\n",
                b"NEGOTIATE_UNIX_FD\r\n",
                b"BEGIN\r\n",
            ],
        );
        assert_eq!(st, authed(Some(1000), true, false));
        assert_eq!(out, format!("{ALL_REJECTED}{}AGREE_UNIX_FD\r\n", ok_line()));
    }

    #[test]
    fn data_dance() {
        let mut a = Authenticator::new(unix_cfg(1000));
        let (st, out, _) = drive(&mut a, &[b"\0AUTH EXTERNAL\r\n"]);
        assert_eq!((st, out.as_str()), (AuthStatus::NeedMore, "DATA\r\n"));
        // Bad hex is an ERROR and keeps the conversation.
        let (_, _, out) = feed(&mut a, b"DATA 3x\r\n");
        assert!(out.starts_with("ERROR"), "{out}");
        let (_, _, out) = feed(&mut a, b"DATA 31303030\r\n");
        assert_eq!(out, ok_line());
        let (_, st, _) = feed(&mut a, b"BEGIN\r\n");
        assert_eq!(st, authed(Some(1000), false, false));

        // DATA naming someone else.
        let mut a = Authenticator::new(unix_cfg(1000));
        let (st, out, _) = drive(&mut a, &[b"\0AUTH EXTERNAL\r\n", b"DATA 30\r\n"]);
        assert_eq!(st, AuthStatus::NeedMore);
        assert_eq!(out, format!("DATA\r\n{ALL_REJECTED}"));
        // Back in the initial state: DATA has no conversation now.
        let (_, _, out) = feed(&mut a, b"DATA\r\n");
        assert!(out.starts_with("ERROR"), "{out}");

        // Explicit empty initial response behaves like none.
        let mut a = Authenticator::new(unix_cfg(5));
        let (_, out, _) = drive(&mut a, &[b"\0AUTH EXTERNAL \r\n", b"DATA\r\n"]);
        assert_eq!(out, format!("DATA\r\n{}", ok_line()));
    }

    #[test]
    fn wrong_uid_rejected_then_retry() {
        let mut a = Authenticator::new(unix_cfg(1000));
        let (st, out, _) = drive(
            &mut a,
            &[b"\0AUTH EXTERNAL 30\r\n", b"AUTH EXTERNAL 31303030\r\n"],
        );
        assert_eq!(st, AuthStatus::NeedMore);
        assert_eq!(out, format!("{ALL_REJECTED}{}", ok_line()));
        // Numeric forms that do not name uid 1000.
        for id in ["", "-1000", "1000 ", "4294967295", "99999999999", "01000x"] {
            let mut a = Authenticator::new(unix_cfg(1000));
            let line = format!("\0AUTH EXTERNAL {}\r\n", hex(id.as_bytes()));
            let (_, _, out) = feed(&mut a, line.as_bytes());
            if id.is_empty() {
                assert_eq!(out, "DATA\r\n");
            } else {
                assert_eq!(out, ALL_REJECTED, "identity {id:?}");
            }
        }
        // Leading zeros are still the same number.
        let mut a = Authenticator::new(unix_cfg(1000));
        let line = format!("\0AUTH EXTERNAL {}\r\n", hex(b"01000"));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ok_line());
    }

    #[test]
    fn external_login_name() {
        let Ok(Some(root)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0)) else {
            return;
        };
        let mut a = Authenticator::new(unix_cfg(0));
        let line = format!("\0AUTH EXTERNAL {}\r\n", hex(root.name.as_bytes()));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ok_line());

        let mut a = Authenticator::new(unix_cfg(1000));
        let line = format!("\0AUTH EXTERNAL {}\r\n", hex(root.name.as_bytes()));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);

        let mut a = Authenticator::new(unix_cfg(0));
        let line = format!("\0AUTH EXTERNAL {}\r\n", hex(b"no-such-user-sluicebus"));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
        let line = format!("AUTH EXTERNAL {}\r\n", hex(b"ro\0ot"));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
        let line = format!("AUTH EXTERNAL {}\r\n", hex(b"\xff\xfe"));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
    }

    #[test]
    fn cancel_and_error() {
        // Initial state: CANCEL is an error, ERROR is a rejection.
        let mut a = Authenticator::new(unix_cfg(1));
        let (_, _, out) = feed(&mut a, b"\0CANCEL\r\n");
        assert!(out.starts_with("ERROR \""), "{out}");
        assert_eq!(feed(&mut a, b"ERROR\r\n").2, ALL_REJECTED);
        assert_eq!(feed(&mut a, b"ERROR \"whatever\"\r\n").2, ALL_REJECTED);

        // Mid-conversation: CANCEL rejects and resets.
        let mut a = Authenticator::new(unix_cfg(1));
        let (_, out, _) = drive(&mut a, &[b"\0AUTH EXTERNAL\r\n", b"CANCEL\r\n"]);
        assert_eq!(out, format!("DATA\r\n{ALL_REJECTED}"));
        let (_, _, out) = feed(&mut a, b"DATA\r\n");
        assert!(out.starts_with("ERROR"), "{out}");
        let (_, out, _) = drive(&mut a, &[b"AUTH EXTERNAL\r\n", b"ERROR\r\n"]);
        assert_eq!(out, format!("DATA\r\n{ALL_REJECTED}"));

        // After OK: CANCEL rejects, and BEGIN is then fatal.
        let mut a = Authenticator::new(unix_cfg(1));
        let (st, out, _) = drive(
            &mut a,
            &[b"\0AUTH EXTERNAL 31\r\n", b"CANCEL\r\n", b"BEGIN\r\n"],
        );
        assert_eq!(out, format!("{}{ALL_REJECTED}", ok_line()));
        assert!(matches!(st, AuthStatus::Failed(_)));

        // After OK: ERROR rejects too, and fd agreement is forgotten.
        let mut a = Authenticator::new(unix_cfg(1));
        let (st, _, _) = drive(
            &mut a,
            &[
                b"\0AUTH EXTERNAL 31\r\nNEGOTIATE_UNIX_FD\r\nERROR\r\n",
                b"AUTH EXTERNAL 31\r\nBEGIN\r\n",
            ],
        );
        assert_eq!(st, authed(Some(1), false, false));
    }

    #[test]
    fn first_byte_must_be_nul() {
        let mut a = Authenticator::new(unix_cfg(1));
        let (n, st, out) = feed(&mut a, b"AUTH EXTERNAL 31\r\n");
        assert_eq!(n, 0);
        assert!(matches!(st, AuthStatus::Failed(_)));
        assert!(out.is_empty());
        // Stays failed.
        assert!(matches!(feed(&mut a, b"\0").1, AuthStatus::Failed(_)));
    }

    #[test]
    fn garbage_lines_get_errors() {
        let cases: &[&[u8]] = &[
            b"HELLO\r\n",
            b"auth EXTERNAL 31303030\r\n",
            b"Auth\r\n",
            b"\r\n",
            b" AUTH\r\n",
            b"AUTH EXTERNAL \xc3\xa9\r\n",
            b"\xffAUTH\r\n",
            b"AU\0TH\r\n",
            b"EXTENSION_FOO bar\r\n",
            b"OK 1234\r\n",
            b"REJECTED EXTERNAL\r\n",
            b"AGREE_UNIX_FD\r\n",
            b"DATA 31\r\n",
            b"NEGOTIATE_UNIX_FD\r\n",
            b"AUTH EXTERNAL 3\r\n",
            b"AUTH EXTERNAL zz\r\n",
            b"AUTH NOSUCHMECH 3g\r\n",
            b"AUTH EXTERNAL 31\nBEGIN\r\n",
        ];
        for line in cases {
            let mut a = Authenticator::new(unix_cfg(1));
            let mut input = vec![0u8];
            input.extend_from_slice(line);
            let (n, st, out) = feed(&mut a, &input);
            assert_eq!(n, input.len(), "{line:?}");
            assert_eq!(st, AuthStatus::NeedMore, "{line:?}");
            assert!(
                out.starts_with("ERROR \"") && out.ends_with("\"\r\n"),
                "{line:?}: {out}"
            );
            assert_eq!(out.matches("\r\n").count(), 1);
            // Still usable afterwards: errors do not change state.
            assert_eq!(
                feed(&mut a, b"AUTH EXTERNAL 31\r\n").2,
                ok_line(),
                "{line:?}"
            );
        }
    }

    #[test]
    fn unknown_and_disabled_mechanisms_rejected() {
        let mut a = Authenticator::new(unix_cfg(1));
        assert_eq!(feed(&mut a, b"\0AUTH KERBEROS_V4\r\n").2, ALL_REJECTED);
        assert_eq!(feed(&mut a, b"AUTH external 31\r\n").2, ALL_REJECTED);

        let mut cfg = unix_cfg(1);
        cfg.mechanisms = vec![Mechanism::External, Mechanism::External];
        let mut a = Authenticator::new(cfg);
        assert_eq!(
            feed(&mut a, b"\0AUTH ANONYMOUS\r\n").2,
            "REJECTED EXTERNAL\r\n"
        );
        assert_eq!(feed(&mut a, b"AUTH\r\n").2, "REJECTED EXTERNAL\r\n");

        let mut cfg = unix_cfg(1);
        cfg.mechanisms = vec![Mechanism::Anonymous, Mechanism::External];
        let mut a = Authenticator::new(cfg);
        assert_eq!(
            feed(&mut a, b"\0AUTH DBUS_COOKIE_SHA1 30\r\n").2,
            "REJECTED ANONYMOUS EXTERNAL\r\n"
        );
    }

    #[test]
    fn begin_before_ok_fails() {
        for input in [
            &b"\0BEGIN\r\n"[..],
            b"\0AUTH EXTERNAL\r\nBEGIN\r\n",
            b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n",
        ] {
            let mut a = Authenticator::new(unix_cfg(1));
            let (n, st, _) = feed(&mut a, input);
            assert_eq!(n, input.len());
            assert_eq!(st, AuthStatus::Failed("BEGIN before authentication"));
        }
    }

    #[test]
    fn auth_in_wrong_state() {
        let mut a = Authenticator::new(unix_cfg(1));
        let (_, _, out) = feed(&mut a, b"\0AUTH EXTERNAL\r\nAUTH EXTERNAL 31\r\n");
        assert!(out.starts_with("DATA\r\nERROR"), "{out}");
        let (_, _, out) = feed(&mut a, b"DATA 31\r\nAUTH EXTERNAL 31\r\nDATA\r\n");
        let lines: Vec<&str> = out.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], format!("OK {GUID}"));
        assert!(lines[1].starts_with("ERROR"));
        assert!(lines[2].starts_with("ERROR"));
        assert_eq!(feed(&mut a, b"BEGIN\r\n").1, authed(Some(1), false, false));
    }

    #[test]
    fn overlong_lines() {
        // A pending line that can no longer fit.
        let mut a = Authenticator::new(unix_cfg(1));
        let mut input = vec![0u8];
        input.extend(std::iter::repeat_n(b'A', MAX_LINE_LEN));
        let (_, st, _) = feed(&mut a, &input);
        assert_eq!(st, AuthStatus::Failed("auth line too long"));

        // One byte less is still waiting for its CRLF... which then just fits.
        let mut a = Authenticator::new(unix_cfg(1));
        let mut input = vec![0u8];
        input.extend(std::iter::repeat_n(b'A', MAX_LINE_LEN - 2));
        input.push(b'\r');
        let (n, st, _) = feed(&mut a, &input);
        assert_eq!((n, st), (1, AuthStatus::NeedMore));
        input.push(b'\n');
        let (n, st, out) = feed(&mut a, &input[1..]);
        assert_eq!((n, st), (MAX_LINE_LEN, AuthStatus::NeedMore));
        assert!(out.starts_with("ERROR"));

        // A complete line that is too long.
        let mut a = Authenticator::new(unix_cfg(1));
        let mut input = b"\0AUTH EXTERNAL ".to_vec();
        input.extend(std::iter::repeat_n(b'3', MAX_LINE_LEN));
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            feed(&mut a, &input).1,
            AuthStatus::Failed("auth line too long")
        );

        // Byte by byte into the limit.
        let mut a = Authenticator::new(unix_cfg(1));
        let mut input = vec![0u8];
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_LEN + 10));
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (st, _, rest) = drive(&mut a, &chunks);
        assert_eq!(st, AuthStatus::Failed("auth line too long"));
        assert_eq!(rest.len(), MAX_LINE_LEN);
    }

    #[test]
    fn too_many_rejections() {
        let mut a = Authenticator::new(unix_cfg(1000));
        for i in 0..MAX_REJECTIONS - 1 {
            let line: &[u8] = if i == 0 { b"\0AUTH\r\n" } else { b"AUTH\r\n" };
            let (n, st, out) = feed(&mut a, line);
            assert!(n > 0);
            assert_eq!((st, out.as_str()), (AuthStatus::NeedMore, ALL_REJECTED));
        }
        let (_, st, out) = feed(&mut a, b"AUTH EXTERNAL 30\r\nAUTH EXTERNAL 31303030\r\n");
        assert_eq!(
            out, ALL_REJECTED,
            "the line after the last rejection is not processed"
        );
        assert!(matches!(st, AuthStatus::Failed(_)));

        // Mixed ways of being rejected count together.
        let mut a = Authenticator::new(unix_cfg(1000));
        let input =
            b"\0AUTH\r\nERROR\r\nAUTH NOPE\r\nAUTH EXTERNAL\r\nCANCEL\r\nAUTH EXTERNAL 31\r\nERROR\r\n";
        let (n, st, out) = feed(&mut a, input);
        assert_eq!(n, input.len());
        assert_eq!(out.matches("REJECTED").count(), 6);
        assert!(matches!(st, AuthStatus::Failed(_)));
    }

    #[test]
    fn tcp_has_no_external_and_no_fds() {
        let mut a = Authenticator::new(tcp_cfg(Vec::new()));
        assert_eq!(feed(&mut a, b"\0AUTH EXTERNAL 30\r\n").2, ALL_REJECTED);
        assert_eq!(feed(&mut a, b"AUTH EXTERNAL\r\n").2, ALL_REJECTED);
        let trace = format!("AUTH ANONYMOUS {}\r\n", hex(b"trace me"));
        assert_eq!(feed(&mut a, trace.as_bytes()).2, ok_line());
        let (_, _, out) = feed(&mut a, b"NEGOTIATE_UNIX_FD\r\n");
        assert!(out.starts_with("ERROR"), "{out}");
        assert_eq!(feed(&mut a, b"BEGIN\r\n").1, authed(None, false, true));
    }

    #[test]
    fn anonymous_without_trace() {
        let mut a = Authenticator::new(unix_cfg(1000));
        let (_, st, out) = feed(&mut a, b"\0AUTH ANONYMOUS\r\nBEGIN\r\n");
        assert_eq!(out, ok_line());
        assert_eq!(st, authed(None, false, true));
    }

    #[test]
    fn guid_format() {
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

    #[test]
    fn hex_helpers() {
        assert_eq!(hex_decode("").unwrap(), b"");
        assert_eq!(hex_decode("3130aF").unwrap(), b"10\xaf");
        assert!(hex_decode("3").is_none());
        assert!(hex_decode("3g").is_none());
        assert!(hex_decode("31 30").is_none());
        assert_eq!(hex(b"\x00\xff\x10"), "00ff10");
        assert_eq!(split_word("AUTH  EXTERNAL\t31 "), ("AUTH", "EXTERNAL\t31"));
        assert_eq!(split_word("BEGIN"), ("BEGIN", ""));
        assert_eq!(find_crlf(b"ab\r\ncd\r\n", 0), Some(2));
        assert_eq!(find_crlf(b"ab\r\ncd\r\n", 3), Some(6));
        assert_eq!(find_crlf(b"ab\r", 0), None);
        assert_eq!(find_crlf(b"ab", 9), None);
    }

    #[test]
    fn sha1_vectors() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        // 55, 56 and 64 bytes straddle the padding boundaries.
        assert_eq!(
            hex(&sha1(&[b'a'; 55])),
            "c1c8bbdc22796e28c0e15163d20899b65621d65a"
        );
        assert_eq!(
            hex(&sha1(&[b'a'; 56])),
            "c2db330f6083854c99d4b5bfb6e8f29f201be699"
        );
        assert_eq!(
            hex(&sha1(&[b'a'; 64])),
            "0098ba824b5c16427bd7a1122a5a442a25ec644d"
        );
        assert_eq!(
            hex(&sha1(&vec![b'a'; 1_000_000])),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    // ---- DBUS_COOKIE_SHA1 ----

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let mut r = [0u8; 8];
            random_bytes(&mut r).unwrap();
            let p = std::env::temp_dir().join(format!("sluicebus-auth-{tag}-{}", hex(&r)));
            std::fs::create_dir(&p).unwrap();
            TempDir(p)
        }
        fn keyrings(&self) -> PathBuf {
            self.0.join(".dbus-keyrings")
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn my_name() -> Option<String> {
        let uid = nix::unistd::geteuid();
        nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    fn cookie_auth(dir: &Path, cfg: AuthConfig) -> Authenticator {
        Authenticator::new(cfg).with_keyring_dir(dir.to_path_buf())
    }

    /// Start a cookie conversation; returns (context, cookie id, server challenge).
    fn cookie_challenge(a: &mut Authenticator, user: &str) -> (String, u32, String) {
        let line = format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex(user.as_bytes()));
        let (_, st, out) = feed(a, line.as_bytes());
        assert_eq!(st, AuthStatus::NeedMore);
        let data = out
            .strip_prefix("DATA ")
            .and_then(|s| s.strip_suffix("\r\n"))
            .unwrap_or_else(|| panic!("{out}"));
        let text = String::from_utf8(hex_decode(data).unwrap()).unwrap();
        let parts: Vec<&str> = text.split(' ').collect();
        assert_eq!(parts.len(), 3, "{text}");
        (
            parts[0].to_string(),
            parts[1].parse().unwrap(),
            parts[2].to_string(),
        )
    }

    fn cookie_from_file(dir: &Path, id: u32) -> String {
        let text = std::fs::read_to_string(dir.join(keyring::CONTEXT)).unwrap();
        keyring::parse(&text)
            .into_iter()
            .find(|c| c.id == id)
            .unwrap()
            .hex
    }

    fn client_response(server: &str, client: &str, cookie: &str) -> String {
        let digest = hex(&sha1(format!("{server}:{client}:{cookie}").as_bytes()));
        format!("DATA {}\r\n", hex(format!("{client} {digest}").as_bytes()))
    }

    #[test]
    fn cookie_sha1_full_flow() {
        let Some(name) = my_name() else { return };
        let uid = nix::unistd::geteuid().as_raw();
        let tmp = TempDir::new("flow");
        let dir = tmp.keyrings();
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let (ctx, id, challenge) = cookie_challenge(&mut a, &name);
        assert_eq!(ctx, "org_freedesktop_general");
        assert_eq!(challenge.len(), 64);
        // The server created a private keyring with one fresh cookie and released the lock.
        let dmeta = std::fs::metadata(&dir).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        let fmeta = std::fs::metadata(dir.join(keyring::CONTEXT)).unwrap();
        assert_eq!(fmeta.permissions().mode() & 0o777, 0o600);
        assert!(!dir.join("org_freedesktop_general.lock").exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp files left"
        );
        let cookie = cookie_from_file(&dir, id);
        assert_eq!(cookie.len(), 48);

        let (_, st, out) = feed(
            &mut a,
            client_response(&challenge, "c0ffee", &cookie).as_bytes(),
        );
        assert_eq!((st, out), (AuthStatus::NeedMore, ok_line()));
        assert_eq!(
            feed(&mut a, b"BEGIN\r\n").1,
            authed(Some(uid), false, false)
        );

        // A second connection reuses the still-fresh cookie.
        let mut b = cookie_auth(&dir, unix_cfg(uid));
        let (_, id2, challenge2) = cookie_challenge(&mut b, &uid.to_string());
        assert_eq!(id2, id);
        assert_ne!(challenge2, challenge);
        // Uppercase hash digits are fine.
        let resp = {
            let digest = hex(&sha1(format!("{challenge2}:xyz:{cookie}").as_bytes())).to_uppercase();
            format!("DATA {}\r\n", hex(format!("xyz {digest}").as_bytes()))
        };
        assert_eq!(feed(&mut b, resp.as_bytes()).2, ok_line());
    }

    #[test]
    fn cookie_sha1_bad_responses() {
        let Some(name) = my_name() else { return };
        let tmp = TempDir::new("bad");
        let dir = tmp.keyrings();
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let (_, id, challenge) = cookie_challenge(&mut a, &name);
        let cookie = cookie_from_file(&dir, id);
        type Resp = fn(&str, &str) -> String;
        let bad: [Resp; 7] = [
            |ch, _| client_response(ch, "abc", "0000"), // wrong cookie
            |_, ck| client_response("nope", "abc", ck), // wrong server challenge
            |_, _| format!("DATA {}\r\n", hex(b"nospace")),
            |_, _| {
                format!(
                    "DATA {}\r\n",
                    hex(format!(" {}", "0".repeat(40)).as_bytes())
                )
            },
            |_, _| format!("DATA {}\r\n", hex(b"abc 1234")), // short hash
            |_, _| "DATA\r\n".to_string(),
            |_, _| format!("DATA {}\r\n", hex(b"abc \xff\xfe")), // not UTF-8
        ];
        for (i, resp) in bad.iter().enumerate() {
            let mut b = cookie_auth(&dir, tcp_cfg(Vec::new()));
            let (_, _, ch) = cookie_challenge(&mut b, &name);
            assert_eq!(
                feed(&mut b, resp(&ch, &cookie).as_bytes()).2,
                ALL_REJECTED,
                "case {i}"
            );
        }
        // Bad hex in DATA is only an ERROR; the conversation goes on.
        let (_, _, out) = feed(&mut a, b"DATA xy\r\n");
        assert!(out.starts_with("ERROR"));
        assert_eq!(
            feed(
                &mut a,
                client_response(&challenge, "ok", &cookie).as_bytes()
            )
            .2,
            ok_line()
        );
    }

    #[test]
    fn cookie_sha1_refuses_other_users_and_no_name() {
        let tmp = TempDir::new("other");
        let dir = tmp.keyrings();
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 65534 { 65533 } else { 65534 };
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let line = format!(
            "\0AUTH DBUS_COOKIE_SHA1 {}\r\n",
            hex(other.to_string().as_bytes())
        );
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
        assert_eq!(feed(&mut a, b"AUTH DBUS_COOKIE_SHA1\r\n").2, ALL_REJECTED);
        let line = format!(
            "AUTH DBUS_COOKIE_SHA1 {}\r\n",
            hex(b"no-such-user-sluicebus")
        );
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
        assert!(!dir.exists(), "nothing touched for refused users");
    }

    #[test]
    fn cookie_keyring_expiry_and_future() {
        let Some(name) = my_name() else { return };
        let tmp = TempDir::new("expiry");
        let dir = tmp.keyrings();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let now = unix_now();
        let text = format!(
            "1 {} aaaa\n2 {} bbbb\n3 {} CCCC\ngarbage line\n4 x dddd\n5 {} zz\n3 {} eeee\n",
            now - 1000,
            now + 1000,
            now - 10,
            now,
            now
        );
        std::fs::write(dir.join(keyring::CONTEXT), text).unwrap();
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let (_, id, challenge) = cookie_challenge(&mut a, &name);
        assert_eq!(id, 3);
        let after = keyring::parse(&std::fs::read_to_string(dir.join(keyring::CONTEXT)).unwrap());
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].hex, "cccc");
        assert_eq!(
            feed(&mut a, client_response(&challenge, "q", "cccc").as_bytes()).2,
            ok_line()
        );

        // Only an aging cookie (6 min): a new one is added, the old one kept until expiry.
        std::fs::write(
            dir.join(keyring::CONTEXT),
            format!("9 {} abcd\n", now - 360),
        )
        .unwrap();
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let (_, id, _) = cookie_challenge(&mut a, &name);
        assert_ne!(id, 9);
        let after = keyring::parse(&std::fs::read_to_string(dir.join(keyring::CONTEXT)).unwrap());
        assert_eq!(after.len(), 2);
    }

    #[test]
    fn cookie_keyring_locking() {
        let Some(name) = my_name() else { return };
        let tmp = TempDir::new("lock");
        let dir = tmp.keyrings();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let lock = dir.join("org_freedesktop_general.lock");
        std::fs::write(&lock, b"").unwrap();

        // Fresh lock and no usable cookie: cannot add one, so reject.
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let line = format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex(name.as_bytes()));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
        assert!(lock.exists(), "someone else's lock is left alone");

        // Fresh lock but a fresh cookie: read-only use works.
        let now = unix_now();
        std::fs::write(dir.join(keyring::CONTEXT), format!("12 {now} 00ff\n")).unwrap();
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let (_, id, challenge) = cookie_challenge(&mut a, &name);
        assert_eq!(id, 12);
        assert_eq!(
            feed(&mut a, client_response(&challenge, "r", "00ff").as_bytes()).2,
            ok_line()
        );
        assert!(lock.exists());

        // A stale lock is broken and the keyring maintained.
        std::fs::write(dir.join(keyring::CONTEXT), b"").unwrap();
        let old = nix::sys::time::TimeVal::new(unix_now() - 60, 0);
        nix::sys::stat::utimes(&lock, &old, &old).unwrap();
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let (_, id, _) = cookie_challenge(&mut a, &name);
        assert!(!lock.exists());
        assert_eq!(cookie_from_file(&dir, id).len(), 48);
    }

    #[test]
    fn cookie_keyring_must_be_private() {
        let Some(name) = my_name() else { return };
        let tmp = TempDir::new("perm");
        let dir = tmp.keyrings();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut a = cookie_auth(&dir, tcp_cfg(Vec::new()));
        let line = format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex(name.as_bytes()));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
        assert!(!dir.join(keyring::CONTEXT).exists());
        // A file where the directory should be.
        let tmp2 = TempDir::new("perm2");
        std::fs::write(tmp2.keyrings(), b"x").unwrap();
        let mut a = cookie_auth(&tmp2.keyrings(), tcp_cfg(Vec::new()));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ALL_REJECTED);
    }
}
