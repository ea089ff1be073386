//! SASL authentication, server side (D-Bus specification, "Authentication Protocol").
//!
//! [`Authenticator`] is a sans-IO state machine: the reactor hands it the bytes read so far
//! and writes out whatever it appends to the reply buffer. It makes no system calls: the
//! little it needs from the system (the user database for login-name identities, the
//! DBUS_COOKIE_SHA1 keyring, random challenges) comes through an [`AuthWorld`], asked only
//! when a client's request needs it.

use std::rc::Rc;

/// Longest auth line accepted, CRLF included (dbus-daemon keeps 16 KiB of pending auth input).
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// Length of the nonce a `nonce-tcp:` client sends before anything else (D-Bus
/// specification, "Nonce-authenticated TCP Sockets"; dbus-daemon's nonce files hold 16 bytes).
pub const NONCE_LEN: usize = 16;

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

/// The cookie context the bus uses for DBUS_COOKIE_SHA1 (dbus-daemon's only one; the
/// specification, "DBUS_COOKIE_SHA1", names keyring files after their context).
pub const COOKIE_CONTEXT: &str = "org_freedesktop_general";

/// What the SASL server needs from outside the protocol. The reactor passes the real system
/// (`crate::auth_world::SystemAuthWorld`); tests pass a fake one.
pub trait AuthWorld {
    /// Fill `buf` with unpredictable bytes (DBUS_COOKIE_SHA1 server challenges). Returns
    /// false when no randomness is available; the client is then rejected.
    fn random(&mut self, buf: &mut [u8]) -> bool;

    /// The uid of the account called `name` (SASL identities may be login names instead of
    /// decimal uids), or None if there is no such account.
    fn uid_by_name(&mut self, name: &str) -> Option<u32>;

    /// The cookie to challenge `uid` with, from that user's keyring for `context`, adding a
    /// fresh one when needed (specification, "DBUS_COOKIE_SHA1"). None when the keyring
    /// cannot be used or the user is refused (dbus-daemon only uses its own user's
    /// keyring); the client is then rejected, and the world logs anything unexpected.
    fn cookie(&mut self, uid: u32, context: &str) -> Option<CookieSecret>;
}

/// One DBUS_COOKIE_SHA1 keyring entry as the handshake needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSecret {
    /// The cookie's id, sent to the client in the challenge.
    pub id: u32,
    /// The secret in lower-case hex, exactly as it goes into the hash.
    pub hex: String,
}

/// A list of mechanisms, each at most once (there are three): kept inline, so setting up a
/// connection's SASL allocates nothing for it.
pub type Mechanisms = arrayvec::ArrayVec<Mechanism, 3>;

/// Per-connection authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Allowed mechanisms (`REJECTED` lists them in [`Mechanism::ALL`]'s order); empty
    /// means all three.
    pub mechanisms: Mechanisms,
    /// The socket is `AF_UNIX`, so `NEGOTIATE_UNIX_FD` may be agreed to.
    pub unix_fd_capable: bool,
    /// The peer's uid from `SO_PEERCRED`; `None` on TCP (EXTERNAL is then rejected).
    pub peer_uid: Option<u32>,
    /// The listening address's GUID, sent in `OK` (shared by its connections).
    pub guid: Rc<str>,
    /// For a `nonce-tcp:` listener, the nonce the client must send before the credentials
    /// byte; a connection that sends anything else is closed without a reply.
    pub nonce: Option<[u8; NONCE_LEN]>,
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
    /// Before the nonce of a `nonce-tcp:` connection.
    WaitingForNonce,
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
    mechanisms: Mechanisms,
    unix_fd_capable: bool,
    peer_uid: Option<u32>,
    guid: Rc<str>,
    nonce: Option<[u8; NONCE_LEN]>,
    state: State,
    rejections: u32,
    /// Why each `REJECTED` since the last [`Authenticator::take_rejections`] was sent.
    rejected_why: Vec<String>,
    /// Bytes at the start of the pending (unconsumed) input already known to hold no CRLF,
    /// so byte-by-byte delivery does not rescan the whole line each time.
    scanned: usize,
}

impl Authenticator {
    /// A fresh authenticator waiting for the credentials byte.
    pub fn new(cfg: AuthConfig) -> Self {
        // In dbus-daemon's order, whatever the order of the configuration's <auth> lines.
        let mut mechanisms = Mechanisms::new();
        for m in Mechanism::ALL {
            if cfg.mechanisms.is_empty() || cfg.mechanisms.contains(&m) {
                // Cannot fail: at most the three distinct mechanisms.
                let _ = mechanisms.try_push(m);
            }
        }
        Authenticator {
            mechanisms,
            unix_fd_capable: cfg.unix_fd_capable,
            peer_uid: cfg.peer_uid,
            guid: cfg.guid,
            state: if cfg.nonce.is_some() {
                State::WaitingForNonce
            } else {
                State::WaitingForNul
            },
            nonce: cfg.nonce,
            rejections: 0,
            rejected_why: Vec::new(),
            scanned: 0,
        }
    }

    /// Consume as many complete lines as possible from `input`, appending server replies to
    /// `out`, asking `world` for what only the system knows. Returns (bytes consumed, status). On BEGIN it stops right after "BEGIN\r\n" so
    /// the caller hands the rest of the buffer (the first message) to the message parser.
    ///
    /// The caller must keep the unconsumed bytes and pass them again, unchanged, at the start
    /// of `input` on the next call. Once `Authenticated` or `Failed` is returned, every later
    /// call returns the same status and consumes nothing.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        world: &mut dyn AuthWorld,
    ) -> (usize, AuthStatus) {
        let mut pos = 0usize;
        if let State::WaitingForNonce = self.state {
            let Some(got) = input.first_chunk::<NONCE_LEN>() else {
                return (0, AuthStatus::NeedMore);
            };
            // Without an early exit, so timing does not tell how much of a guess was right.
            let diff = self
                .nonce
                .unwrap_or_default()
                .iter()
                .zip(got)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && self.nonce.is_some() {
                pos = NONCE_LEN;
                self.state = State::WaitingForNul;
            } else {
                self.state = State::Failed("wrong nonce");
            }
        }
        if let State::WaitingForNul = self.state {
            match input.get(pos) {
                None => return (pos, AuthStatus::NeedMore),
                Some(0) => {
                    pos += 1;
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
                    self.handle_line(rest.get(..eol).unwrap_or(&[]), out, world);
                }
            }
        }
    }

    /// Why each `REJECTED` sent since the last call was sent, oldest first, for the log
    /// (a client only ever learns the list of mechanisms).
    pub fn take_rejections(&mut self) -> Vec<String> {
        std::mem::take(&mut self.rejected_why)
    }

    fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>, world: &mut dyn AuthWorld) {
        // dbus-daemon refuses NUL and bytes with the high bit set, but keeps the connection.
        if line.iter().any(|&b| b == 0 || !b.is_ascii()) {
            return send_error(out, "Command contained non-ASCII");
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return send_error(out, "Command contained non-ASCII");
        };
        let (cmd, args) = split_word(line);
        match cmd {
            "AUTH" => self.on_auth(args, out, world),
            "DATA" => self.on_data(args, out, world),
            "CANCEL" => match self.state {
                State::WaitingForAuth => send_error(out, "Not currently in an auth conversation"),
                _ => self.reject(out, "the client cancelled".into()),
            },
            "ERROR" => self.reject(out, "the client sent ERROR".into()),
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

    fn on_auth(&mut self, args: &str, out: &mut Vec<u8>, world: &mut dyn AuthWorld) {
        match self.state {
            State::WaitingForAuth => {}
            State::WaitingForData(_) => {
                return send_error(out, "Sent AUTH while another AUTH in progress")
            }
            _ => return send_error(out, "Sent AUTH while expecting BEGIN"),
        }
        if args.is_empty() {
            return self.reject(out, "AUTH without a mechanism".into());
        }
        let (mech, hex) = split_word(args);
        let Some(initial) = Decoded::new(hex) else {
            return send_error(out, "Invalid hex encoding");
        };
        match Mechanism::parse(mech).filter(|m| self.mechanisms.contains(m)) {
            None => {
                let name: String = mech.chars().take(64).collect();
                self.reject(out, format!("mechanism {name} is not offered"))
            }
            Some(Mechanism::External) => {
                if self.peer_uid.is_none() {
                    // No socket credentials (TCP): nothing to vouch for the identity.
                    self.reject(out, "EXTERNAL without socket credentials".into())
                } else if initial.is_empty() {
                    out.extend_from_slice(b"DATA\r\n");
                    self.state = State::WaitingForData(Conversation::External);
                } else {
                    self.external_identity(&initial, out, world)
                }
            }
            Some(Mechanism::Anonymous) => {
                // The optional trace string carries no authority, so it is ignored.
                self.accept(None, true, out)
            }
            Some(Mechanism::CookieSha1) => self.cookie_start(&initial, out, world),
        }
    }

    fn on_data(&mut self, args: &str, out: &mut Vec<u8>, world: &mut dyn AuthWorld) {
        // In libdbus's words for the state the server is in.
        let conv = match &self.state {
            State::WaitingForData(conv) => conv,
            State::WaitingForBegin { .. } => {
                return send_error(out, "Sent DATA while expecting BEGIN")
            }
            _ => return send_error(out, "Not currently in an auth conversation"),
        };
        let Some(data) = Decoded::new(args) else {
            return send_error(out, "Invalid hex encoding");
        };
        match conv {
            Conversation::External => {
                if data.is_empty() {
                    // "Use my socket credentials."
                    self.accept(self.peer_uid, false, out)
                } else {
                    self.external_identity(&data, out, world)
                }
            }
            Conversation::CookieSha1(ch) => {
                let uid = ch.uid;
                if cookie_response_ok(ch, &data) {
                    self.accept(Some(uid), false, out)
                } else {
                    self.reject(
                        out,
                        format!("DBUS_COOKIE_SHA1 response for uid {uid} does not match"),
                    )
                }
            }
        }
    }

    /// EXTERNAL with an explicit identity: it must name the socket's uid.
    fn external_identity(&mut self, identity: &[u8], out: &mut Vec<u8>, world: &mut dyn AuthWorld) {
        match self.peer_uid {
            Some(peer) if resolve_identity(identity, world) == Some(peer) => {
                self.accept(Some(peer), false, out)
            }
            Some(peer) => self.reject(
                out,
                format!("EXTERNAL identity is not the connecting uid {peer}"),
            ),
            None => self.reject(out, "EXTERNAL without socket credentials".into()),
        }
    }

    /// DBUS_COOKIE_SHA1, first step: the client named its user; send the challenge
    /// `<context> <cookie id> <random hex>` (specification, "DBUS_COOKIE_SHA1").
    fn cookie_start(&mut self, username: &[u8], out: &mut Vec<u8>, world: &mut dyn AuthWorld) {
        let Some(uid) = resolve_identity(username, world) else {
            return self.reject(out, "DBUS_COOKIE_SHA1 for an unknown user".into());
        };
        let Some(cookie) = world.cookie(uid, COOKIE_CONTEXT) else {
            return self.reject(
                out,
                format!("DBUS_COOKIE_SHA1: no cookie for uid {uid} in the bus's keyring"),
            );
        };
        let mut raw = [0u8; 32];
        if !world.random(&mut raw) {
            return self.reject(
                out,
                "no random bytes for a DBUS_COOKIE_SHA1 challenge".into(),
            );
        }
        let mut server_challenge = String::with_capacity(64);
        hex_encode(&raw, &mut server_challenge);
        let challenge = format!("{COOKIE_CONTEXT} {} {server_challenge}", cookie.id);
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
        // One allocation for the line rather than a growth per piece (every connect).
        out.reserve(b"OK \r\n".len() + self.guid.len());
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
    /// `why` is kept for [`Authenticator::take_rejections`].
    fn reject(&mut self, out: &mut Vec<u8>, why: String) {
        self.rejected_why.push(why);
        out.extend_from_slice(b"REJECTED");
        for m in &self.mechanisms {
            out.push(b' ');
            out.extend_from_slice(m.name().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
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
    // Byte-wise: blanks are ASCII, so every cut falls on a character boundary.
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let b = s.as_bytes();
    let Some(end) = b.iter().position(blank) else {
        return (s, "");
    };
    let from = b
        .iter()
        .skip(end)
        .position(|c| !blank(c))
        .map_or(b.len(), |i| end + i);
    let to = b
        .iter()
        .rposition(|c| !blank(c))
        .map_or(from, |i| (i + 1).max(from));
    (s.get(..end).unwrap_or(""), s.get(from..to).unwrap_or(""))
}

/// Decode SASL hex (either case); `None` on odd length or a non-hex character.
pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
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

/// Decoded SASL hex. What every connection sends (an EXTERNAL identity: a uid in decimal)
/// is short and stays on the stack; only long data is decoded into the heap.
enum Decoded {
    Inline(arrayvec::ArrayVec<u8, 64>),
    Heap(Vec<u8>),
}

impl Decoded {
    /// Decode `s` like [`hex_decode`].
    fn new(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() > 2 * 64 {
            return hex_decode(s).map(Decoded::Heap);
        }
        if b.len() % 2 != 0 {
            return None;
        }
        let mut out = arrayvec::ArrayVec::new();
        for pair in b.chunks_exact(2) {
            let [h, l] = pair else { return None };
            // Cannot fail: at most 64 pairs.
            let _ = out.try_push(super::hex_val(*h)? << 4 | super::hex_val(*l)?);
        }
        Some(Decoded::Inline(out))
    }
}

impl std::ops::Deref for Decoded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Decoded::Inline(a) => a,
            Decoded::Heap(v) => v,
        }
    }
}

/// Append `bytes` as lower-case hex.
pub(crate) fn hex_encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        super::push_hex(out, b);
    }
}

/// Map a SASL identity (decimal uid, or a login name) to a uid.
fn resolve_identity(id: &[u8], world: &mut dyn AuthWorld) -> Option<u32> {
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
    world.uid_by_name(name)
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
    let ours = cookie_digest(&ch.server_challenge, client_challenge, &ch.cookie_hex);
    // Compare without an early exit so timing does not leak how much of the hash matched.
    ours.bytes()
        .zip(their_hash.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
        == 0
}

/// The hash a DBUS_COOKIE_SHA1 client answers with: lower-case hex of
/// SHA-1(`<server challenge>:<client challenge>:<cookie>`) (specification, "DBUS_COOKIE_SHA1").
pub fn cookie_digest(server_challenge: &str, client_challenge: &str, cookie_hex: &str) -> String {
    let mut input = String::with_capacity(
        server_challenge.len() + client_challenge.len() + cookie_hex.len() + 2,
    );
    input.push_str(server_challenge);
    input.push(':');
    input.push_str(client_challenge);
    input.push(':');
    input.push_str(cookie_hex);
    let mut ours = String::with_capacity(40);
    hex_encode(&sha1(input.as_bytes()), &mut ours);
    ours
}

/// A server GUID from 96 random bits and the current Unix time: 32 lowercase hex digits,
/// the random bytes followed by the time as 32-bit big-endian (specification, "UUIDs").
pub fn new_guid(random: &[u8; 12], unix_time: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..12].copy_from_slice(random);
    // Truncation to 32 bits is what the specification's UUID layout calls for.
    raw[12..].copy_from_slice(&(unix_time as u32).to_be_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: &str = "0123456789abcdef0123456789abcdef";
    const HELLO: &[u8] = b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x6d\x00\x00\x00";

    fn unix_cfg(uid: u32) -> AuthConfig {
        AuthConfig {
            mechanisms: Mechanisms::new(),
            unix_fd_capable: true,
            peer_uid: Some(uid),
            guid: GUID.into(),
            nonce: None,
        }
    }

    fn tcp_cfg(mechanisms: Vec<Mechanism>) -> AuthConfig {
        AuthConfig {
            mechanisms: mechanisms.into_iter().collect(),
            unix_fd_capable: false,
            peer_uid: None,
            guid: GUID.into(),
            nonce: None,
        }
    }

    fn hex(s: &[u8]) -> String {
        let mut h = String::new();
        hex_encode(s, &mut h);
        h
    }

    /// A deterministic world: counting "random" bytes, two users, one cookie for uid 1000.
    struct FakeWorld {
        next_random: u8,
        random_works: bool,
        cookie: Option<CookieSecret>,
        /// (uid, context) of every cookie request.
        cookie_requests: Vec<(u32, String)>,
    }

    const COOKIE_UID: u32 = 1000;

    fn world() -> FakeWorld {
        FakeWorld {
            next_random: 0,
            random_works: true,
            cookie: Some(CookieSecret {
                id: 42,
                hex: "00112233445566778899aabbccddeeff0011223344556677".into(),
            }),
            cookie_requests: Vec::new(),
        }
    }

    impl AuthWorld for FakeWorld {
        fn random(&mut self, buf: &mut [u8]) -> bool {
            for b in buf.iter_mut() {
                *b = self.next_random;
                self.next_random = self.next_random.wrapping_add(1);
            }
            self.random_works
        }

        fn uid_by_name(&mut self, name: &str) -> Option<u32> {
            match name {
                "root" => Some(0),
                "alice" => Some(COOKIE_UID),
                _ => None,
            }
        }

        fn cookie(&mut self, uid: u32, context: &str) -> Option<CookieSecret> {
            self.cookie_requests.push((uid, context.to_owned()));
            // Like the bus: only its own user's keyring.
            if uid == COOKIE_UID {
                self.cookie.clone()
            } else {
                None
            }
        }
    }

    /// One feed call in `w`; returns (consumed, status, replies as text).
    fn feed_in(
        a: &mut Authenticator,
        w: &mut FakeWorld,
        input: &[u8],
    ) -> (usize, AuthStatus, String) {
        let mut out = Vec::new();
        let (n, st) = a.feed(input, &mut out, w);
        (n, st, String::from_utf8(out).unwrap())
    }

    /// One feed call in a fresh fake world.
    fn feed(a: &mut Authenticator, input: &[u8]) -> (usize, AuthStatus, String) {
        feed_in(a, &mut world(), input)
    }

    /// Drives `a` like the reactor: a buffer that receives `chunks` one at a time and loses
    /// whatever was consumed. Returns the final status, all replies, and the leftover buffer.
    fn drive(a: &mut Authenticator, chunks: &[&[u8]]) -> (AuthStatus, String, Vec<u8>) {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut st = AuthStatus::NeedMore;
        for c in chunks {
            buf.extend_from_slice(c);
            let (n, s) = a.feed(&buf, &mut out, &mut world());
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
        let mut a = Authenticator::new(unix_cfg(0));
        let line = format!("\0AUTH EXTERNAL {}\r\n", hex(b"root"));
        assert_eq!(feed(&mut a, line.as_bytes()).2, ok_line());

        let mut a = Authenticator::new(unix_cfg(1000));
        let line = format!("\0AUTH EXTERNAL {}\r\n", hex(b"root"));
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
        cfg.mechanisms = [Mechanism::External, Mechanism::External]
            .into_iter()
            .collect();
        let mut a = Authenticator::new(cfg);
        assert_eq!(
            feed(&mut a, b"\0AUTH ANONYMOUS\r\n").2,
            "REJECTED EXTERNAL\r\n"
        );
        assert_eq!(feed(&mut a, b"AUTH\r\n").2, "REJECTED EXTERNAL\r\n");

        let mut cfg = unix_cfg(1);
        cfg.mechanisms = [Mechanism::Anonymous, Mechanism::External]
            .into_iter()
            .collect();
        let mut a = Authenticator::new(cfg);
        // Listed in dbus-daemon's order, not the configuration's.
        assert_eq!(
            feed(&mut a, b"\0AUTH DBUS_COOKIE_SHA1 30\r\n").2,
            "REJECTED EXTERNAL ANONYMOUS\r\n"
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
        // Each rejection has its reason for the log, in order, handed out once.
        assert_eq!(
            a.take_rejections(),
            [
                "AUTH without a mechanism",
                "the client sent ERROR",
                "mechanism NOPE is not offered",
                "the client cancelled",
                "EXTERNAL identity is not the connecting uid 1000",
                "the client sent ERROR",
            ]
        );
        assert!(a.take_rejections().is_empty());
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
    fn nonce_comes_first() {
        let nonce: [u8; NONCE_LEN] = *b"0123456789abcdef";
        let cfg = || AuthConfig {
            nonce: Some(nonce),
            ..tcp_cfg(Vec::new())
        };
        // Right nonce, then the usual conversation, byte by byte.
        let mut a = Authenticator::new(cfg());
        let mut input = nonce.to_vec();
        input.extend_from_slice(b"\0AUTH ANONYMOUS\r\nBEGIN\r\n");
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (st, out, rest) = drive(&mut a, &chunks);
        assert_eq!(
            (st, out, rest),
            (authed(None, false, true), ok_line(), vec![])
        );
        // All in one write.
        let mut a = Authenticator::new(cfg());
        let (n, st, out) = feed(&mut a, &input);
        assert_eq!(
            (n, st, out),
            (input.len(), authed(None, false, true), ok_line())
        );
        // Fifteen bytes are not a decision yet.
        let mut a = Authenticator::new(cfg());
        assert_eq!(
            feed(&mut a, &nonce[..15]),
            (0, AuthStatus::NeedMore, String::new())
        );
        // A wrong nonce (one bit off, or a client that does not know about nonces) is
        // closed without a word, whatever follows.
        let mut wrong = nonce;
        wrong[15] ^= 1;
        for attempt in [&wrong[..], b"\0AUTH ANONYMOUS\r\nBEGIN\r\n"] {
            let mut a = Authenticator::new(cfg());
            let (_, st, out) = feed(&mut a, attempt);
            assert_eq!((st, out.as_str()), (AuthStatus::Failed("wrong nonce"), ""));
        }
        // The credentials byte is still required after the nonce.
        let mut a = Authenticator::new(cfg());
        let mut input = nonce.to_vec();
        input.extend_from_slice(b"AUTH ANONYMOUS\r\n");
        assert!(matches!(feed(&mut a, &input).1, AuthStatus::Failed(_)));
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
        let random: [u8; 12] = core::array::from_fn(|i| i as u8 * 17);
        let g = new_guid(&random, 0x6543_2100);
        assert_eq!(g, "00112233445566778899aabb65432100");
        // Only the low 32 bits of the time fit (specification, "UUIDs").
        let g = new_guid(&[0xff; 12], 0x1_0000_0005);
        assert_eq!(g, "ffffffffffffffffffffffff00000005");
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
        assert_eq!(split_word("DATA \t "), ("DATA", ""));
        assert_eq!(split_word(" x"), ("", "x"));
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

    /// Start a cookie conversation in `w`; returns (context, cookie id, server challenge).
    fn cookie_challenge(
        a: &mut Authenticator,
        w: &mut FakeWorld,
        user: &str,
    ) -> (String, u32, String) {
        let line = format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex(user.as_bytes()));
        let (_, st, out) = feed_in(a, w, line.as_bytes());
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

    /// The client's answer, hashed here independently of [`cookie_digest`].
    fn client_response(server: &str, client: &str, cookie: &str) -> String {
        let digest = hex(&sha1(format!("{server}:{client}:{cookie}").as_bytes()));
        format!("DATA {}\r\n", hex(format!("{client} {digest}").as_bytes()))
    }

    #[test]
    fn cookie_sha1_full_exchange() {
        let mut w = world();
        let cookie = w.cookie.clone().unwrap().hex;
        let mut a = Authenticator::new(tcp_cfg(Vec::new()));
        // The whole server side of the exchange is determined by the world: the challenge is
        // "<context> <id> <32 random bytes in hex>", hex-encoded once more on the wire.
        let (_, st, out) = feed_in(&mut a, &mut w, b"\0AUTH DBUS_COOKIE_SHA1 616c696365\r\n");
        assert_eq!(st, AuthStatus::NeedMore);
        let server_challenge: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        let challenge = format!("org_freedesktop_general 42 {server_challenge}");
        assert_eq!(out, format!("DATA {}\r\n", hex(challenge.as_bytes())));
        assert_eq!(
            w.cookie_requests,
            [(COOKIE_UID, "org_freedesktop_general".to_owned())]
        );

        // The client proves it knows the cookie: SHA-1 of "server:client:cookie".
        let expected = "DATA 6330666665652037333037336638303165666532643538336562326336333731336435616137306565316531336333\r\n";
        let resp = client_response(&server_challenge, "c0ffee", &cookie);
        assert_eq!(resp, expected);
        assert_eq!(
            cookie_digest(&server_challenge, "c0ffee", &cookie),
            "73073f801efe2d583eb2c63713d5aa70ee1e13c3"
        );
        let (_, st, out) = feed_in(&mut a, &mut w, resp.as_bytes());
        assert_eq!((st, out), (AuthStatus::NeedMore, ok_line()));
        assert_eq!(
            feed_in(&mut a, &mut w, b"BEGIN\r\n").1,
            authed(Some(COOKIE_UID), false, false)
        );

        // A decimal uid works too, gets a new challenge, and uppercase hash digits are fine.
        let mut b = Authenticator::new(unix_cfg(COOKIE_UID));
        let (ctx, id, challenge2) = cookie_challenge(&mut b, &mut w, "1000");
        assert_eq!((ctx.as_str(), id), ("org_freedesktop_general", 42));
        assert_ne!(challenge2, server_challenge);
        let resp = {
            let digest = cookie_digest(&challenge2, "xyz", &cookie).to_uppercase();
            format!("DATA {}\r\n", hex(format!("xyz {digest}").as_bytes()))
        };
        assert_eq!(feed_in(&mut b, &mut w, resp.as_bytes()).2, ok_line());
    }

    #[test]
    fn cookie_sha1_bad_responses() {
        let mut w = world();
        let cookie = w.cookie.clone().unwrap().hex;
        let mut a = Authenticator::new(tcp_cfg(Vec::new()));
        let (_, _, challenge) = cookie_challenge(&mut a, &mut w, "alice");
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
            let mut b = Authenticator::new(tcp_cfg(Vec::new()));
            let (_, _, ch) = cookie_challenge(&mut b, &mut w, "alice");
            assert_eq!(
                feed_in(&mut b, &mut w, resp(&ch, &cookie).as_bytes()).2,
                ALL_REJECTED,
                "case {i}"
            );
        }
        // Bad hex in DATA is only an ERROR; the conversation goes on.
        let (_, _, out) = feed_in(&mut a, &mut w, b"DATA xy\r\n");
        assert!(out.starts_with("ERROR"));
        let resp = client_response(&challenge, "ok", &cookie);
        assert_eq!(feed_in(&mut a, &mut w, resp.as_bytes()).2, ok_line());
    }

    #[test]
    fn cookie_sha1_refusals() {
        let mut w = world();
        let mut a = Authenticator::new(tcp_cfg(Vec::new()));
        // A user whose keyring the world will not use.
        assert_eq!(
            feed_in(&mut a, &mut w, b"\0AUTH DBUS_COOKIE_SHA1 726f6f74\r\n").2,
            ALL_REJECTED
        );
        assert_eq!(
            w.cookie_requests,
            [(0, "org_freedesktop_general".to_owned())]
        );
        // No name, an unknown name, (uid_t)-1: the world is not even asked.
        for line in [
            "AUTH DBUS_COOKIE_SHA1\r\n".to_owned(),
            format!("AUTH DBUS_COOKIE_SHA1 {}\r\n", hex(b"nobody-here")),
            format!("AUTH DBUS_COOKIE_SHA1 {}\r\n", hex(b"4294967295")),
        ] {
            assert_eq!(feed_in(&mut a, &mut w, line.as_bytes()).2, ALL_REJECTED);
        }
        assert_eq!(w.cookie_requests.len(), 1);

        // No keyring, or no randomness for the challenge: rejected, and retrying is allowed.
        let mut a = Authenticator::new(tcp_cfg(Vec::new()));
        let mut w = world();
        w.cookie = None;
        let line = b"\0AUTH DBUS_COOKIE_SHA1 616c696365\r\n";
        assert_eq!(feed_in(&mut a, &mut w, line).2, ALL_REJECTED);
        let mut w = world();
        w.random_works = false;
        assert_eq!(feed_in(&mut a, &mut w, &line[1..]).2, ALL_REJECTED);
        assert_eq!(
            a.take_rejections(),
            [
                "DBUS_COOKIE_SHA1: no cookie for uid 1000 in the bus's keyring",
                "no random bytes for a DBUS_COOKIE_SHA1 challenge",
            ]
        );
        assert_eq!(
            feed_in(&mut a, &mut world(), b"AUTH ANONYMOUS\r\n").2,
            ok_line()
        );

        // Not offered on this listener: the world is never consulted.
        let mut a = Authenticator::new(tcp_cfg(vec![Mechanism::Anonymous]));
        let mut w = world();
        assert_eq!(feed_in(&mut a, &mut w, line).2, "REJECTED ANONYMOUS\r\n");
        assert!(w.cookie_requests.is_empty());
    }
}
