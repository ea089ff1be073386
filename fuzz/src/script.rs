//! The `bus` target's input framing, shared by the target (decoding) and the seed generator
//! (encoding), so both always agree.
//!
//! Byte 0 picks the configuration ([`CONFIGS`]). Then steps follow until the input ends, each
//! one op byte (`kind | slot << 3`: kind in the low 3 bits, connection slot 0-7 in bits 3-5,
//! bits 6-7 ignored) and the kind's arguments. A step whose arguments are cut short by the
//! end of the input uses zeros for them (a SEND sends what is left).

/// Number of connection slots a script can address.
pub const SLOTS: usize = 8;

/// The configurations byte 0 picks from (modulo their number).
pub const CONFIGS: usize = 2;

/// `CONNECT a`: a client connects to slot (hanging up whoever was there). `a & 3` picks the
/// uid from [`UIDS`]; `a & 4`: on a Containers1 instance's socket (the `(a >> 3) & 7`-th
/// listening one; none listening: the main socket); `a & 0x40`: fd passing negotiated;
/// `a & 0x80`: authentication not finished yet (an AUTH step finishes it).
pub const CONNECT: u8 = 0;
/// `AUTH`: the slot's SASL exchange succeeds (`Bus::authenticated`).
pub const AUTH: u8 = 1;
/// `SEND lo hi bytes…`: the slot's client writes `lo | hi << 8` bytes (as many as are left).
pub const SEND: u8 = 2;
/// `READ lo hi`: the slot's socket takes `lo | hi << 8` bytes of its queue (0xffff: all).
pub const READ: u8 = 3;
/// `HANGUP`: the slot's client closes its end.
pub const HANGUP: u8 = 4;
/// `ADVANCE t`: the virtual clock moves `t * t * 4` ms (0 to 260 s) and the timers run.
pub const ADVANCE: u8 = 5;
/// `RELOAD`: SIGHUP; the bus reloads and gets the other configuration.
pub const RELOAD: u8 = 6;
/// `DRAIN`: every client reads everything queued for it.
pub const DRAIN: u8 = 7;

/// The uids `CONNECT` picks from: root, the harness's user, another user, the daemon's.
pub const UIDS: [u32; 4] = [0, 1000, 1001, 4242];

/// Builds a script (for seeds).
pub struct Script(pub Vec<u8>);

impl Script {
    /// A script on configuration `config`.
    pub fn new(config: u8) -> Script {
        Script(vec![config])
    }
    fn op(&mut self, kind: u8, slot: usize) -> &mut Script {
        self.0.push(kind | ((slot as u8 & 7) << 3));
        self
    }
    /// CONNECT with argument `a` (see [`CONNECT`]).
    pub fn connect(&mut self, slot: usize, a: u8) -> &mut Script {
        self.op(CONNECT, slot).0.push(a);
        self
    }
    /// AUTH.
    pub fn auth(&mut self, slot: usize) -> &mut Script {
        self.op(AUTH, slot)
    }
    /// SEND of `bytes` (at most 65535).
    pub fn send(&mut self, slot: usize, bytes: &[u8]) -> &mut Script {
        let n = bytes.len().min(0xffff);
        self.op(SEND, slot);
        self.0.extend_from_slice(&(n as u16).to_le_bytes());
        self.0.extend_from_slice(&bytes[..n]);
        self
    }
    /// READ of `n` bytes (0xffff: all).
    pub fn read(&mut self, slot: usize, n: u16) -> &mut Script {
        self.op(READ, slot);
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    /// HANGUP.
    pub fn hangup(&mut self, slot: usize) -> &mut Script {
        self.op(HANGUP, slot)
    }
    /// ADVANCE by `t * t * 4` ms.
    pub fn advance(&mut self, t: u8) -> &mut Script {
        self.op(ADVANCE, 0).0.push(t);
        self
    }
    /// RELOAD.
    pub fn reload(&mut self) -> &mut Script {
        self.op(RELOAD, 0)
    }
    /// DRAIN.
    pub fn drain(&mut self) -> &mut Script {
        self.op(DRAIN, 0)
    }
}
