//! Quotas: what each connection, and each uid, makes the bus hold, and the back-pressure
//! that keeps it within `max_incoming_bytes` / `max_incoming_unix_fds` and the per-uid
//! quotas (`max_bytes_per_user`, `max_unix_fds_per_user`).
//!
//! # What is charged, to whom
//!
//! Every connection has an [`Account`]; every uid (one for all connections whose uid is
//! unknown) a [`User`] that sums its accounts. An account holds:
//!
//! - **queued**: the messages the connection sent that sit in receivers' queues, each
//!   charged exactly what its receiver is charged (`delivery::cost`), on push, and released
//!   when it is written or, once its receiver is gone, when the piece of the buried queue
//!   holding it is released (`Delivery::written` / `reap`). A broadcast
//!   is charged once per receiver, as each receiver's queue is, so the charge never depends
//!   on whether a buffer happens to be shared. Messages the bus itself sends and copies for
//!   monitors are charged to nobody ([`NOBODY`]): a monitor's queue is bounded by its own
//!   `max_outgoing_bytes` and it is disconnected when over it, so a slow monitor never
//!   throttles the traffic it watches.
//! - **partial**: what the reactor holds of the message being received (and the fds that
//!   came ahead of it), reported after each read ([`Quotas::set_partial`]).
//!
//! An account outlives its connection while messages it sent are still queued elsewhere,
//! so that their release is charged back to the right uid (connection ids are reused). This
//! follows dbus-broker's per-user accounting (`src/util/user.c`), with one difference:
//! dbus-broker charges queued messages to the receiver's user on behalf of the sender's
//! and shares the receiver's resources fairly among senders; sluicebus bounds each
//! receiver by `max_outgoing_bytes` already, so it charges the sender's uid, the one that
//! chose to make the bus hold the bytes.
//!
//! # The order of the limits
//!
//! 1. **Per receiver** (`max_outgoing_bytes` / `_unix_fds`), at each push: a receiver whose
//!    queue is over it is refused the message: a unicast sender is answered
//!    `LimitsExceeded`, a subscriber, monitor or eavesdropper is disconnected (logged).
//! 2. **Per sender** (`max_incoming_bytes` / `_unix_fds`), before each read: a connection
//!    whose account is over it is not read (paused) until writes (or its receivers leaving)
//!    bring it back under. Nothing is dropped. Only a connection that has messages queued
//!    somewhere is paused: the release that resumes it is then always coming, from the
//!    receiver reading or going away. A partial message alone never pauses its own
//!    connection: finishing it is the only way to release it.
//! 3. **Per uid** (`max_bytes_per_user` / `max_unix_fds_per_user`): before each read too,
//!    every connection of a uid over its quota is paused while the uid has messages queued
//!    (they will be written or dropped with their receivers, and the pause lifts then).
//!    A unicast from an over-quota uid is answered `LimitsExceeded` (messages already read
//!    when the quota ran out); a broadcast is still delivered (no receiver is refused a
//!    signal for its sender's quota), so a uid may overshoot by one read's worth of
//!    messages. When all a uid holds is partial messages, no write would ever release them:
//!    the connection that grows one past the quota is disconnected instead, as dbus-broker
//!    disconnects a peer that "does not have the resources to queue further messages".
//!
//! The per-receiver limit comes first so that a receiver that does not read is dealt with
//! at its own queue. The one message that takes a receiver's queue past
//! `max_outgoing_bytes` / `_unix_fds` is not charged to its sender (`Delivery::push`), so a
//! single receiver holds at most its own limit of a sender's charge: as long as
//! `max_incoming_bytes >= max_outgoing_bytes` (dbus-daemon's defaults are equal), one
//! receiver that never reads cannot pause its sender; it is refused the next unicast
//! (`LimitsExceeded` to the sender) or disconnected at the next signal instead. A sender is
//! paused only when several receivers together hold more than its limit, and then the pause
//! lasts until they read or leave, as in dbus-daemon, whose incoming counter also keeps a
//! message counted while any receiver's queue holds it. A paused connection is resumed by [`super::Effect::Resume`] as soon as
//! a release brings it back under every limit. A client that writes to itself without ever
//! reading can stall itself once it is over `max_incoming_bytes`, and only itself.
//!
//! Every refusal, pause of a uid and disconnect for a quota is logged once per episode
//! with the uid and the limit (a uid's episode ends when it is back under its quota).
//!
//! The root uid and the bus's own uid have quotas like every other, as in dbus-broker
//! (dbus-daemon has no per-uid quota but `max_connections_per_user`, which applies to them
//! too).

use super::ConnId;
use ahash::AHashMap;
use slab::Slab;

/// The account of nobody: the charge of bus messages and monitor copies.
pub const NOBODY: u32 = u32::MAX;

/// Bytes and fds held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Bytes of memory.
    pub bytes: usize,
    /// File descriptors.
    pub fds: usize,
}

impl Held {
    fn over(self, bytes: usize, fds: usize) -> bool {
        self.bytes > bytes || self.fds > fds
    }
    fn plus(self, o: Held) -> Held {
        Held {
            bytes: self.bytes + o.bytes,
            fds: self.fds + o.fds,
        }
    }
    fn is_zero(self) -> bool {
        self.bytes == 0 && self.fds == 0
    }
}

/// Why a connection is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// Its own account is over `max_incoming_bytes` / `_unix_fds`.
    Connection,
    /// Its uid is over its quota.
    User,
}

/// What one connection makes the bus hold.
#[derive(Debug)]
struct Account {
    /// Index of its uid's [`User`].
    user: usize,
    /// Its messages queued for receivers.
    queued: Held,
    /// The message it is sending, as far as received.
    partial: Held,
    /// The connection; None once it is gone (the account stays while `queued` is not zero).
    conn: Option<ConnId>,
    /// The reactor was told not to read it, and why.
    paused: Option<Pause>,
    /// It is over `max_incoming_bytes` / `_unix_fds` with messages queued (counted in
    /// `Quotas::n_over`).
    over: bool,
}

/// What all connections of one uid make the bus hold.
#[derive(Debug)]
struct User {
    uid: Option<u32>,
    queued: Held,
    partial: Held,
    /// Accounts (live or draining) of this uid.
    accounts: usize,
    /// Accounts paused because this uid is over its quota.
    paused: usize,
    /// Over its quota and its pause logged: the next such line waits until it is back
    /// under.
    logged: bool,
    /// Likewise for the refusal of a unicast or of a partial message.
    refusal_logged: bool,
    /// It is over its quota (counted in `Quotas::n_over`).
    over: bool,
}

impl User {
    fn held(&self) -> Held {
        self.queued.plus(self.partial)
    }
    /// A release must look further: accounts paused for this uid, or an episode to end.
    fn watch(&self) -> bool {
        self.paused > 0 || self.logged || self.refusal_logged
    }
}

impl Account {
    /// A release must look further: it is paused, or its connection is gone.
    fn watch(&self) -> bool {
        self.paused.is_some() || self.conn.is_none()
    }
}

/// The limits [`Quotas`] enforces (from [`super::limits::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// `max_incoming_bytes`.
    pub conn_bytes: usize,
    /// `max_incoming_unix_fds`.
    pub conn_fds: usize,
    /// `max_bytes_per_user`.
    pub user_bytes: usize,
    /// `max_unix_fds_per_user`.
    pub user_fds: usize,
}

impl QuotaLimits {
    /// The quotas of `l`.
    pub fn of(l: &super::limits::Limits) -> QuotaLimits {
        QuotaLimits {
            conn_bytes: l.max_incoming_bytes as usize,
            conn_fds: l.max_incoming_unix_fds as usize,
            user_bytes: l.bytes_per_user(),
            user_fds: l.unix_fds_per_user(),
        }
    }
}

/// A uid's quota ran out: which one, for the refusal's text and log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    /// The uid (None: connections whose uid is unknown).
    pub uid: Option<u32>,
    /// `max_bytes_per_user=N (M bytes held)` or the fds equivalent.
    pub limit: String,
    /// This is the first refusal of the episode: log it.
    pub first: bool,
}

/// Every account's queued charge as (account, uid slot, queued), and every uid slot's as
/// (slot, queued): see [`Quotas::ledger`].
#[cfg(any(test, feature = "fuzzing"))]
pub(super) type Ledger = (Vec<(u32, usize, Held)>, Vec<(usize, Held)>);

/// Every account and uid, and the connections to resume.
#[derive(Debug)]
pub struct Quotas {
    accounts: Slab<Account>,
    users: Slab<User>,
    by_uid: AHashMap<Option<u32>, usize>,
    limits: QuotaLimits,
    /// Connections paused until now that may be read again ([`Quotas::take_resumed`]).
    resumed: Vec<ConnId>,
    /// Charges to one account being added up while a broadcast is routed
    /// ([`Quotas::begin_batch`]): one update per signal, not per copy.
    batch: (u32, Held),
    /// Accounts and uids over a limit: while zero, `may_read` and `sender_over` answer
    /// without looking anything up.
    n_over: usize,
}

impl Quotas {
    /// No accounts, these limits.
    pub fn new(limits: QuotaLimits) -> Quotas {
        Quotas {
            accounts: Slab::new(),
            users: Slab::new(),
            by_uid: AHashMap::new(),
            limits,
            resumed: Vec::new(),
            n_over: 0,
            batch: (NOBODY, Held::default()),
        }
    }

    /// Recompute whether `acct` and `user` are over their limits, keeping `n_over` exact.
    fn refresh(&mut self, acct: usize, user: usize) {
        let l = self.limits;
        if let Some(a) = self.accounts.get_mut(acct) {
            let over =
                !a.queued.is_zero() && a.queued.plus(a.partial).over(l.conn_bytes, l.conn_fds);
            if over != std::mem::replace(&mut a.over, over) {
                if over {
                    self.n_over += 1;
                } else {
                    self.n_over -= 1;
                }
            }
        }
        self.refresh_user(user);
    }

    fn refresh_user(&mut self, user: usize) {
        let l = self.limits;
        if let Some(u) = self.users.get_mut(user) {
            let over = u.held().over(l.user_bytes, l.user_fds);
            if over != std::mem::replace(&mut u.over, over) {
                if over {
                    self.n_over += 1;
                } else {
                    self.n_over -= 1;
                }
            }
        }
    }

    /// New limits (a reload): connections no longer over them resume.
    pub fn set_limits(&mut self, limits: QuotaLimits) {
        self.limits = limits;
        let all: Vec<(usize, usize)> = self.accounts.iter().map(|(i, a)| (i, a.user)).collect();
        for (i, user) in all {
            self.refresh(i, user);
        }
        let ids: Vec<usize> = self
            .accounts
            .iter()
            .filter(|(_, a)| a.paused.is_some())
            .map(|(i, _)| i)
            .collect();
        for i in ids {
            self.resume_if_under(i);
        }
    }

    /// Open the account of a new connection `conn` with `uid`.
    pub fn open(&mut self, conn: ConnId, uid: Option<u32>) -> u32 {
        let user = self.user_of(uid);
        self.users[user].accounts += 1;
        let id = self.accounts.insert(Account {
            user,
            queued: Held::default(),
            partial: Held::default(),
            conn: Some(conn),
            paused: None,
            over: false,
        });
        u32::try_from(id).unwrap_or(NOBODY)
    }

    fn user_of(&mut self, uid: Option<u32>) -> usize {
        if let Some(&u) = self.by_uid.get(&uid) {
            return u;
        }
        let u = self.users.insert(User {
            uid,
            queued: Held::default(),
            partial: Held::default(),
            accounts: 0,
            paused: 0,
            logged: false,
            refusal_logged: false,
            over: false,
        });
        self.by_uid.insert(uid, u);
        u
    }

    /// The connection authenticated as `uid` (its account was opened with its socket's):
    /// move what it holds to that uid.
    pub fn rehome(&mut self, acct: u32, uid: Option<u32>) {
        let Some(a) = self.accounts.get(acct as usize) else {
            return;
        };
        let old = a.user;
        if self.users[old].uid == uid {
            return;
        }
        let (queued, partial, paused) = (a.queued, a.partial, a.paused);
        let new = self.user_of(uid);
        {
            let u = &mut self.users[old];
            u.queued = sub(u.queued, queued);
            u.partial = sub(u.partial, partial);
            u.accounts -= 1;
            if paused == Some(Pause::User) {
                u.paused -= 1;
            }
        }
        let u = &mut self.users[new];
        u.queued = u.queued.plus(queued);
        u.partial = u.partial.plus(partial);
        u.accounts += 1;
        if paused == Some(Pause::User) {
            u.paused += 1;
        }
        self.accounts[acct as usize].user = new;
        self.refresh(acct as usize, new);
        self.refresh_user(old);
        self.free_user_if_idle(old);
    }

    /// The connection is gone: its partial message with it. The account stays until its
    /// queued messages are released.
    pub fn close(&mut self, acct: u32) {
        let Some(a) = self.accounts.get_mut(acct as usize) else {
            return;
        };
        a.conn = None;
        let (partial, paused, user) = (a.partial, a.paused.take(), a.user);
        a.partial = Held::default();
        let u = &mut self.users[user];
        u.partial = sub(u.partial, partial);
        if paused == Some(Pause::User) {
            u.paused -= 1;
        }
        self.refresh(acct as usize, user);
        self.end_episode_if_under(user);
        self.free_if_drained(acct as usize);
    }

    /// The uid is back under its quota: its next refusal or pause is logged again.
    fn end_episode_if_under(&mut self, user: usize) {
        let l = self.limits;
        if let Some(u) = self.users.get_mut(user) {
            if !u.held().over(l.user_bytes, l.user_fds) {
                u.logged = false;
                u.refusal_logged = false;
            }
        }
    }

    /// Charge `acct` for a message queued for a receiver. A few instructions: every
    /// relayed message passes here.
    #[inline]
    pub fn charge(&mut self, acct: u32, bytes: usize, fds: usize) {
        if acct == self.batch.0 {
            // Within a broadcast, or nobody's (NOBODY is the batch's account otherwise).
            if acct != NOBODY {
                self.batch.1.bytes += bytes;
                self.batch.1.fds += fds;
            }
            return;
        }
        let Some(a) = self.accounts.get_mut(acct as usize) else {
            return;
        };
        a.queued.bytes += bytes;
        a.queued.fds += fds;
        let l = &self.limits;
        let a_over = !a.over && a.queued.plus(a.partial).over(l.conn_bytes, l.conn_fds);
        let user = a.user;
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        u.queued.bytes += bytes;
        u.queued.fds += fds;
        if a_over || (!u.over && u.held().over(l.user_bytes, l.user_fds)) {
            self.refresh(acct as usize, user);
        }
    }

    /// From now until [`Quotas::end_batch`], charges to `acct` are only added up. Nothing
    /// may read the counts meanwhile (the bus routes one broadcast in between).
    #[inline]
    pub fn begin_batch(&mut self, acct: u32) {
        self.batch = (acct, Held::default());
    }

    /// Apply the charges added up since [`Quotas::begin_batch`].
    #[inline]
    pub fn end_batch(&mut self) {
        let (acct, held) = std::mem::replace(&mut self.batch, (NOBODY, Held::default()));
        if acct != NOBODY && !held.is_zero() {
            self.charge(acct, held.bytes, held.fds);
        }
    }

    /// Release a charge of [`Quotas::charge`] (the message was written or dropped). A few
    /// instructions unless something is paused, draining or over a limit.
    #[inline]
    pub fn release(&mut self, acct: u32, bytes: usize, fds: usize) {
        if acct != NOBODY {
            self.apply_release(acct, bytes, fds);
        }
    }

    /// Subtract a release from its account and uid, then resume, forget or end what it
    /// affects.
    #[inline]
    fn apply_release(&mut self, acct: u32, bytes: usize, fds: usize) {
        let Some(a) = self.accounts.get_mut(acct as usize) else {
            return;
        };
        a.queued.bytes = a.queued.bytes.saturating_sub(bytes);
        a.queued.fds = a.queued.fds.saturating_sub(fds);
        let (user, watch) = (a.user, a.watch());
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        u.queued.bytes = u.queued.bytes.saturating_sub(bytes);
        u.queued.fds = u.queued.fds.saturating_sub(fds);
        let watch = watch || u.watch();
        if self.n_over != 0 {
            self.refresh(acct as usize, user);
        }
        if watch {
            self.after_release(acct as usize, user);
        }
    }

    /// Whether connections were resumed and not yet taken ([`Quotas::take_resumed`]).
    #[inline]
    pub fn has_resumed(&self) -> bool {
        !self.resumed.is_empty()
    }

    /// Cold part of [`Quotas::release`]: forget a drained account, resume what may read
    /// again, end the uid's episode.
    #[cold]
    fn after_release(&mut self, acct: usize, user: usize) {
        if !self.free_if_drained(acct) {
            self.resume_if_under(acct);
        }
        let Some(u) = self.users.get(user) else {
            return;
        };
        if u.held().over(self.limits.user_bytes, self.limits.user_fds) {
            return;
        }
        if u.paused > 0 {
            let ids: Vec<usize> = self
                .accounts
                .iter()
                .filter(|(_, a)| a.user == user && a.paused == Some(Pause::User))
                .map(|(i, _)| i)
                .collect();
            for i in ids {
                self.resume_if_under(i);
            }
        }
        if let Some(u) = self.users.get_mut(user) {
            u.logged = false;
            u.refusal_logged = false;
        }
    }

    /// Resume `acct` if it is paused and no limit holds it any more.
    fn resume_if_under(&mut self, acct: usize) {
        let Some(a) = self.accounts.get(acct) else {
            return;
        };
        let (Some(why), Some(conn)) = (a.paused, a.conn) else {
            return;
        };
        if self.pause_reason(acct).is_some() {
            return;
        }
        self.accounts[acct].paused = None;
        if why == Pause::User {
            let u = &mut self.users[self.accounts[acct].user];
            u.paused -= 1;
        }
        self.resumed.push(conn);
    }

    /// Why `acct` may not be read now (see the module documentation), if it may not.
    fn pause_reason(&self, acct: usize) -> Option<Pause> {
        let a = self.accounts.get(acct)?;
        if a.over {
            return Some(Pause::Connection);
        }
        let u = self.users.get(a.user)?;
        if u.over && !u.queued.is_zero() {
            return Some(Pause::User);
        }
        None
    }

    /// Whether the connection of `acct` may be read now. If not, it is paused: its
    /// connection will be in [`Quotas::take_resumed`] once it may be read again.
    #[inline]
    pub fn may_read(&mut self, acct: u32) -> bool {
        if self.n_over == 0 {
            return true;
        }
        let acct = acct as usize;
        let Some(why) = self.pause_reason(acct) else {
            return true;
        };
        self.pause(acct, why);
        false
    }

    #[cold]
    fn pause(&mut self, acct: usize, why: Pause) {
        let a = &mut self.accounts[acct];
        let was = a.paused.replace(why);
        let user = a.user;
        let held = a.queued.plus(a.partial);
        let u = &mut self.users[user];
        match (was, why) {
            (Some(Pause::User), Pause::Connection) => u.paused -= 1,
            (Some(Pause::Connection) | None, Pause::User) => u.paused += 1,
            _ => {}
        }
        let l = self.limits;
        match why {
            Pause::Connection if was.is_none() => log::debug!(
                "connection {:?}: reading paused, the bus holds {} bytes and {} fds it sent (max_incoming_bytes={}, max_incoming_unix_fds={})",
                a.conn, held.bytes, held.fds, l.conn_bytes, l.conn_fds
            ),
            Pause::User if !u.logged => {
                u.logged = true;
                log::warn!(
                    "UID {} is over its quota ({}): reading its connections is paused until the bus has written what they sent",
                    uid_text(u.uid),
                    over_text(u.held(), &l)
                );
            }
            _ => {}
        }
    }

    /// The reactor holds `held` of the message `acct`'s connection is sending (bytes and
    /// fds received ahead of it). Returns false if that took its uid over its quota while
    /// nothing else the uid holds can be released: the caller disconnects it.
    pub fn set_partial(&mut self, acct: u32, held: Held) -> Result<(), OverQuota> {
        let Some(a) = self.accounts.get_mut(acct as usize) else {
            return Ok(());
        };
        if a.partial == held {
            // The common case: nothing partial before or after a read.
            return Ok(());
        }
        let Some(a) = self.accounts.get_mut(acct as usize) else {
            return Ok(());
        };
        let old = std::mem::replace(&mut a.partial, held);
        let user = a.user;
        let u = &mut self.users[a.user];
        u.partial = u.partial.plus(held);
        u.partial = sub(u.partial, old);
        let grew = held.bytes > old.bytes || held.fds > old.fds;
        self.refresh(acct as usize, user);
        let u = &mut self.users[user];
        let l = &self.limits;
        if grew && u.queued.is_zero() && u.held().over(l.user_bytes, l.user_fds) {
            let first = !std::mem::replace(&mut u.refusal_logged, true);
            return Err(OverQuota {
                uid: u.uid,
                limit: over_text(u.held(), l),
                first,
            });
        }
        if held.bytes < old.bytes || held.fds < old.fds {
            self.end_episode_if_under(user);
        }
        Ok(())
    }

    /// Whether any account or uid is over a limit: when not, [`Quotas::sender_over`] is None
    /// for every account (so a caller need not look the account up).
    #[inline]
    pub fn anyone_over(&self) -> bool {
        self.n_over != 0
    }

    /// Whether the uid of `acct` is over its quota (a unicast it sends is refused). Marks
    /// the uid's episode as logged: `first` says whether this is its first line.
    #[inline]
    pub fn sender_over(&mut self, acct: u32) -> Option<OverQuota> {
        if self.n_over == 0 {
            return None;
        }
        let a = self.accounts.get(acct as usize)?;
        let u = self.users.get(a.user)?;
        if !u.over {
            return None;
        }
        self.sender_over_cold(a.user)
    }

    #[cold]
    fn sender_over_cold(&mut self, user: usize) -> Option<OverQuota> {
        let l = self.limits;
        let u = self.users.get_mut(user)?;
        let first = !std::mem::replace(&mut u.refusal_logged, true);
        Some(OverQuota {
            uid: u.uid,
            limit: over_text(u.held(), &l),
            first,
        })
    }

    /// Connections paused until now that may be read again, oldest first.
    pub fn take_resumed(&mut self) -> std::vec::Drain<'_, ConnId> {
        self.resumed.drain(..)
    }

    /// What `acct` holds: its queued messages plus its partial message.
    pub fn held(&self, acct: u32) -> Held {
        self.accounts
            .get(acct as usize)
            .map_or(Held::default(), |a| a.queued.plus(a.partial))
    }

    /// What all connections of `uid` hold.
    pub fn user_held(&self, uid: Option<u32>) -> Held {
        self.by_uid
            .get(&uid)
            .and_then(|&u| self.users.get(u))
            .map_or(Held::default(), User::held)
    }

    /// Every account's queued charge and every uid's, for the invariant checks
    /// (`fuzzing.rs`): the accounts as (account, uid slot, queued), the uids as (slot, queued).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn ledger(&self) -> Ledger {
        let accounts = self
            .accounts
            .iter()
            .map(|(i, a)| (i as u32, a.user, a.queued))
            .collect();
        let users = self.users.iter().map(|(i, u)| (i, u.queued)).collect();
        (accounts, users)
    }

    /// Accounts open, live or draining (for tests: zero once everything is released).
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Whether `acct` is paused.
    pub fn is_paused(&self, acct: u32) -> bool {
        self.accounts
            .get(acct as usize)
            .is_some_and(|a| a.paused.is_some())
    }

    /// Forget `acct` if its connection is gone and it holds nothing. Returns whether it did.
    fn free_if_drained(&mut self, acct: usize) -> bool {
        let Some(a) = self.accounts.get(acct) else {
            return true;
        };
        if a.conn.is_some() || !a.queued.is_zero() {
            return false;
        }
        let user = a.user;
        self.accounts.remove(acct);
        self.users[user].accounts -= 1;
        self.free_user_if_idle(user);
        true
    }

    fn free_user_if_idle(&mut self, user: usize) {
        if self.users.get(user).is_some_and(|u| u.accounts == 0) {
            let u = self.users.remove(user);
            self.by_uid.remove(&u.uid);
        }
    }
}

/// The objects a uid owns: names and match rules, counted over its connections when one
/// asks for another (RequestName, AddMatch: cold paths), so the count cannot drift from
/// the name registry and the match index that own them.
impl super::Bus {
    fn uid_total(&self, uid: Option<u32>, per_conn: impl Fn(ConnId) -> usize) -> usize {
        self.peers
            .iter()
            .filter(|(_, p)| p.creds.uid == uid)
            .map(|(c, _)| per_conn(c))
            .sum()
    }

    /// Refuse a new name for `id` if its uid owns or queues for `max_names_per_user`
    /// already: the `LimitsExceeded` error, logged.
    pub(super) fn check_names_per_user(&self, id: ConnId) -> Result<(), super::error::BusError> {
        let uid = self.peers.get(id).and_then(|p| p.creds.uid);
        let max = self.config.limits.names_per_user();
        let n = self.uid_total(uid, |c| self.names.count(c));
        if n < max {
            return Ok(());
        }
        Err(over_objects(
            self.log_name(id),
            uid,
            "own more services",
            n,
            "names",
            "max_names_per_user",
            max,
        ))
    }

    /// Refuse a new match rule for `id` if its uid has `max_match_rules_per_user` already.
    pub(super) fn check_match_rules_per_user(
        &self,
        id: ConnId,
    ) -> Result<(), super::error::BusError> {
        let uid = self.peers.get(id).and_then(|p| p.creds.uid);
        let max = self.config.limits.match_rules_per_user();
        let n = self.uid_total(uid, |c| self.matches.count(c));
        if n < max {
            return Ok(());
        }
        Err(over_objects(
            self.log_name(id),
            uid,
            "add more match rules",
            n,
            "match rules",
            "max_match_rules_per_user",
            max,
        ))
    }
}

/// The refusal of one more name or match rule for a uid at its quota, in the words of
/// dbus-daemon's per-connection refusals.
fn over_objects(
    who: &str,
    uid: Option<u32>,
    action: &str,
    n: usize,
    what: &str,
    limit: &str,
    max: usize,
) -> super::error::BusError {
    let uid = uid_text(uid);
    super::error::BusError::new(
        super::error::ErrorKind::LimitsExceeded,
        format!(
            "Connection \"{who}\" is not allowed to {action}: UID {uid} has {n} {what} (increase limits in configuration file if required; {limit}={max})"
        ),
    )
    .logged()
}

fn sub(a: Held, b: Held) -> Held {
    Held {
        bytes: a.bytes.saturating_sub(b.bytes),
        fds: a.fds.saturating_sub(b.fds),
    }
}

fn uid_text(uid: Option<u32>) -> String {
    uid.map_or_else(|| "(unknown)".to_owned(), |u| u.to_string())
}

fn over_text(held: Held, l: &QuotaLimits) -> String {
    if held.bytes > l.user_bytes {
        format!(
            "max_bytes_per_user={} ({} bytes held)",
            l.user_bytes, held.bytes
        )
    } else {
        format!(
            "max_unix_fds_per_user={} ({} fds held)",
            l.user_fds, held.fds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> QuotaLimits {
        QuotaLimits {
            conn_bytes: 100,
            conn_fds: 4,
            user_bytes: 250,
            user_fds: 10,
        }
    }

    #[test]
    fn charges_balance_to_zero_and_drained_accounts_are_forgotten() {
        let mut q = Quotas::new(limits());
        let a = q.open(1, Some(1000));
        let b = q.open(2, Some(1000));
        q.charge(a, 40, 1);
        q.charge(a, 40, 0);
        q.charge(b, 10, 0);
        assert_eq!(q.held(a), Held { bytes: 80, fds: 1 });
        assert_eq!(q.user_held(Some(1000)), Held { bytes: 90, fds: 1 });
        // The connection goes; its messages are still queued elsewhere: the account stays.
        q.close(a);
        assert_eq!(q.accounts(), 2);
        q.release(a, 40, 1);
        q.release(a, 40, 0);
        assert_eq!(q.accounts(), 1);
        q.release(b, 10, 0);
        q.close(b);
        assert_eq!(q.accounts(), 0);
        assert_eq!(q.user_held(Some(1000)), Held::default());
        assert!(q.by_uid.is_empty() && q.users.is_empty());
    }

    #[test]
    fn over_max_incoming_pauses_until_released_and_a_partial_alone_never_pauses() {
        let mut q = Quotas::new(limits());
        let a = q.open(7, Some(1000));
        // A large partial message alone: keep reading, it must finish.
        q.set_partial(a, Held { bytes: 500, fds: 0 }).unwrap_err();
        let mut q = Quotas::new(QuotaLimits {
            user_bytes: usize::MAX,
            ..limits()
        });
        let a = q.open(7, Some(1000));
        q.set_partial(a, Held { bytes: 500, fds: 0 }).unwrap();
        assert!(q.may_read(a));
        q.set_partial(a, Held::default()).unwrap();
        q.charge(a, 60, 0);
        assert!(q.may_read(a));
        q.charge(a, 60, 0);
        assert!(!q.may_read(a));
        assert!(q.is_paused(a));
        assert_eq!(q.take_resumed().count(), 0);
        q.release(a, 60, 0);
        assert_eq!(q.take_resumed().collect::<Vec<_>>(), [7]);
        assert!(!q.is_paused(a) && q.may_read(a));
        // fds too.
        for _ in 0..5 {
            q.charge(a, 1, 1);
        }
        assert!(!q.may_read(a));
        q.release(a, 1, 1);
        assert_eq!(q.take_resumed().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn a_uid_over_its_quota_pauses_all_its_connections_and_resumes_them_together() {
        let mut q = Quotas::new(limits());
        let (a, b) = (q.open(1, Some(1000)), q.open(2, Some(1000)));
        let other = q.open(3, Some(2000));
        for _ in 0..3 {
            q.charge(a, 90, 0);
        }
        // a is over its own limit and its uid over the quota; b holds nothing of its own.
        assert!(!q.may_read(a) && !q.may_read(b));
        assert!(q.may_read(other), "another uid is not affected");
        let over = q.sender_over(b).expect("uid over quota");
        assert_eq!(over.uid, Some(1000));
        assert_eq!(over.limit, "max_bytes_per_user=250 (270 bytes held)");
        assert!(over.first, "the first refusal of the episode");
        assert!(!q.sender_over(b).unwrap().first, "then no more");
        q.release(a, 90, 0);
        // Under the uid quota: b resumes; a is still over its own limit.
        assert_eq!(q.take_resumed().collect::<Vec<_>>(), [2]);
        q.release(a, 90, 0);
        assert_eq!(q.take_resumed().collect::<Vec<_>>(), [1]);
        assert!(q.sender_over(b).is_none());
    }

    #[test]
    fn partial_messages_past_the_quota_with_nothing_queued_are_refused_once_logged() {
        let mut q = Quotas::new(limits());
        let (a, b) = (q.open(1, Some(1000)), q.open(2, Some(1000)));
        q.set_partial(a, Held { bytes: 200, fds: 0 }).unwrap();
        let e = q.set_partial(b, Held { bytes: 60, fds: 0 }).unwrap_err();
        assert!(e.first && e.limit.starts_with("max_bytes_per_user=250"));
        // Not growing: no refusal; growing again: refused, not logged again.
        q.set_partial(b, Held { bytes: 60, fds: 0 }).unwrap();
        assert!(
            !q.set_partial(b, Held { bytes: 70, fds: 0 })
                .unwrap_err()
                .first
        );
        q.close(b);
        q.close(a);
        assert_eq!(q.accounts(), 0);
    }

    #[test]
    fn rehome_moves_the_charge_to_the_authenticated_uid() {
        let mut q = Quotas::new(limits());
        let a = q.open(1, None);
        q.charge(a, 10, 0);
        q.rehome(a, Some(5));
        assert_eq!(q.user_held(None), Held::default());
        assert_eq!(q.user_held(Some(5)).bytes, 10);
        assert!(!q.by_uid.contains_key(&None));
    }
}
