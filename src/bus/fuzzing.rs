//! Consistency checks over the whole bus state, for the `bus` fuzz target (feature
//! `fuzzing`) and the sans-IO tests (the harness checks them after every event); not part
//! of the daemon.
//!
//! A fuzzer that drives the core through its public events can only see what the reactor
//! sees. These checks look inside: they compare each bookkeeping counter with what it
//! counts, so a charge that drifts or a record that outlives its connection is caught at
//! the step that caused it rather than as memory growth hours later.

use super::connection::Phase;
use super::{delivery, quota, Bus};
use ahash::AHashMap;

impl Bus {
    /// Check the core's invariants; `Err` says which one failed. Cost: one walk over every
    /// connection and its queue.
    ///
    /// - each connection's queue charge (bytes and fds) equals the sum over its queued
    ///   messages, so does each queue of a gone connection not yet released (the
    ///   graveyard, `Delivery::reap`), and all charges add up to the delivery total;
    /// - each sender's quota account is charged exactly what its messages queued anywhere
    ///   cost, and each uid the sum of its accounts;
    /// - the connection counts by phase and by uid match the connection table;
    /// - every unique name maps to a live connection carrying that name;
    /// - every expected reply names its live caller and callee by their numbers, and each
    ///   connection's counts of calls it waits on and owes match the reply table;
    /// - with no connection left, nothing is held for anyone: no name, no match rule, no
    ///   expected reply, no monitor; and no charge and no quota account once the gone
    ///   connections' queues are released. While they are not (reaping is pending, as it
    ///   may be after any event: the reactor reaps a piece per turn), the accounts left
    ///   must each be charged something, i.e. be kept only by those queued messages
    ///   (which the account check above matched against them).
    pub fn check_invariants(&self) -> Result<(), String> {
        let (mut total, mut messages) = (0usize, 0usize);
        let (mut incomplete, mut completed) = (0usize, 0usize);
        // What each sender's quota account should be charged: the messages of its queued
        // anywhere (a copy queued with no origin, e.g. one that took its receiver past
        // its own limit, is nobody's).
        let mut by_origin: AHashMap<u32, (usize, usize)> = AHashMap::new();
        let mut tally = |ob: &delivery::Outbox, what: &dyn Fn() -> String| {
            let (mut bytes, mut fds, mut n) = (0usize, 0usize, 0usize);
            for out in self.delivery.pending(ob) {
                let cost = delivery::cost(out);
                bytes += cost;
                fds += out.n_fds();
                n += 1;
                if out.origin != quota::NOBODY {
                    let e = by_origin.entry(out.origin).or_default();
                    e.0 += cost;
                    e.1 += out.n_fds();
                }
            }
            if (bytes, fds, n) != (ob.bytes(), ob.fds(), ob.len()) {
                return Err(format!(
                    "{}: queue holds {n} messages, {bytes} bytes, {fds} fds; \
                     charged {} messages, {} bytes, {} fds",
                    what(),
                    ob.len(),
                    ob.bytes(),
                    ob.fds()
                ));
            }
            total += bytes;
            messages += n;
            Ok(())
        };
        for (k, ob) in self.delivery.buried().enumerate() {
            if ob.is_empty() {
                return Err(format!("buried queue {k} is empty but kept"));
            }
            tally(ob, &|| format!("buried queue {k}"))?;
        }
        for (id, p) in self.peers.iter() {
            tally(&p.outbox, &|| format!("connection {id}"))?;
            match p.phase {
                Phase::Authenticating | Phase::Authenticated => incomplete += 1,
                Phase::Active | Phase::Monitor => completed += 1,
            }
        }
        if messages != self.delivery.queued() {
            return Err(format!(
                "queues hold {messages} messages, the pool {}",
                self.delivery.queued()
            ));
        }
        if total != self.delivery.total_bytes() {
            return Err(format!(
                "queues charge {total} bytes, delivery total says {}",
                self.delivery.total_bytes()
            ));
        }
        if (incomplete, completed) != (self.counts.incomplete, self.counts.completed) {
            return Err(format!(
                "{incomplete} incomplete and {completed} completed connections, counted {} and {}",
                self.counts.incomplete, self.counts.completed
            ));
        }
        let by_uid: usize = self.counts.by_uid.values().sum();
        if by_uid != completed || self.counts.by_uid.values().any(|&n| n == 0) {
            return Err(format!(
                "per-uid counts {:?} do not add up to {completed} completed connections",
                self.counts.by_uid
            ));
        }
        for (name, &id) in self.unique.iter() {
            let ok = self
                .peers
                .get(id)
                .and_then(|p| p.unique_name.as_ref())
                .is_some_and(|n| n == name);
            if !ok {
                return Err(format!(
                    "unique name {name} maps to connection {id}, which does not carry it"
                ));
            }
        }
        let (by_conn, bad) = self
            .replies
            .tally(|id| self.peers.get(id).map(|p| p.serial_no));
        if let Some(key) = bad.first() {
            return Err(format!(
                "expected reply {key:?} does not name its caller and callee"
            ));
        }
        for (id, p) in self.peers.iter() {
            let (waits, owes) = by_conn.get(&id).copied().unwrap_or_default();
            if (waits, owes) != (p.pending_replies, p.owed_replies) {
                return Err(format!(
                    "connection {id} waits on {waits} and owes {owes} replies by the table, \
                     counted {} and {}",
                    p.pending_replies, p.owed_replies
                ));
            }
        }
        let (accounts, users) = self.quotas.ledger();
        let mut by_user: AHashMap<usize, (usize, usize)> = AHashMap::new();
        for &(acct, user, held) in &accounts {
            let want = by_origin.remove(&acct).unwrap_or_default();
            if (held.bytes, held.fds) != want {
                return Err(format!(
                    "quota account {acct} is charged {} bytes, {} fds; its queued messages \
                     cost {} bytes, {} fds",
                    held.bytes, held.fds, want.0, want.1
                ));
            }
            let e = by_user.entry(user).or_default();
            e.0 += held.bytes;
            e.1 += held.fds;
        }
        if let Some((acct, _)) = by_origin.iter().next() {
            return Err(format!(
                "queued messages name quota account {acct}, which does not exist"
            ));
        }
        for &(user, held) in &users {
            if (held.bytes, held.fds) != by_user.remove(&user).unwrap_or_default() {
                return Err(format!(
                    "uid slot {user} is charged {} bytes, {} fds, not the sum of its accounts",
                    held.bytes, held.fds
                ));
            }
        }
        if self.peers.is_empty() && !self.delivery.reaping() && !accounts.is_empty() {
            return Err(format!(
                "no connection left and nothing to reap, but {} quota accounts remain",
                accounts.len()
            ));
        }
        if self.peers.is_empty() {
            if let Some((acct, _, _)) = accounts.iter().find(|(_, _, h)| h.bytes == 0 && h.fds == 0)
            {
                return Err(format!(
                    "no connection left, but quota account {acct} remains, charged nothing"
                ));
            }
        }
        if self.peers.is_empty() {
            let held: [(&str, usize); 5] = [
                ("unique names", self.unique.len()),
                ("well-known names", self.names.len()),
                ("match rules", self.matches.total()),
                ("expected replies", self.replies.len()),
                ("monitors", self.monitors.len()),
            ];
            if let Some((what, n)) = held.iter().find(|(_, n)| *n != 0) {
                return Err(format!("no connection left, but {n} {what} are still held"));
            }
        }
        Ok(())
    }
}
