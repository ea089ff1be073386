//! The sans-IO bus core: connection table, name ownership, match rules, routing, driver.
//!
//! The reactor feeds it accepted connections, authenticated identities, validated messages,
//! disconnects and the clock; the bus answers by queueing [`connection::Outgoing`] messages
//! on peers (listed in [`Bus::dirty`]) and by asking for connections to be closed
//! ([`Bus::closing`]). It performs no I/O itself.

pub mod activation;
pub mod connection;
pub mod containers;
pub mod driver;
pub mod error;
pub mod limits;
pub mod match_index;
pub mod match_rule;
pub mod names;
pub mod policy;
pub mod queue;
pub mod routing;
pub mod service_start;

use crate::config::Config;
use ahash::AHashMap;
use connection::{Credentials, Outgoing, Peer, Phase};
use match_index::MatchIndex;
use names::NameRegistry;
use routing::ReplyTable;
use slab::Slab;
use std::rc::Rc;

/// A connection's identity inside the bus: its slab index (also its reactor token).
pub type ConnId = usize;

/// The bus driver's own name.
pub const DRIVER_NAME: &str = "org.freedesktop.DBus";
/// The driver's object path.
pub const DRIVER_PATH: &str = "/org/freedesktop/DBus";
/// The driver's main interface.
pub const DRIVER_IFACE: &str = "org.freedesktop.DBus";

/// Connection counts kept up to date on every phase change, so the accept path and Hello
/// never scan the connection table.
#[derive(Debug, Default)]
pub struct ConnCounts {
    /// Authenticating or waiting for Hello.
    pub incomplete: usize,
    /// Hello done (monitors included).
    pub completed: usize,
    /// Completed connections per uid.
    pub by_uid: AHashMap<Option<u32>, usize>,
}

/// Settings that come from the command line rather than the config file.
#[derive(Debug, Clone, Default)]
pub struct BusOptions {
    /// `--systemd-activation` was given.
    pub systemd_activation: bool,
    /// The address clients connect to (for activation environments).
    pub address: String,
    /// The configuration file, re-read on reload (None: the built-in session default).
    pub config_path: Option<std::path::PathBuf>,
}

/// The whole bus state.
pub struct Bus {
    /// Connection table; the key is the reactor token.
    pub peers: Slab<Peer>,
    /// The queued outgoing messages of every peer (each peer's `out` lists its own).
    pub out_pool: queue::OutPool,
    /// Configuration reloads applied so far (the reactor re-aims its directory watch).
    pub reloads: u64,
    /// `Serial` of the next `GetStats` answer (counts the calls, as in dbus-daemon).
    pub stats_serial: u32,
    /// `Serial` of the next `GetConnectionStats` answer.
    pub conn_stats_serial: u32,
    /// Unique name → connection.
    pub unique: AHashMap<Rc<str>, ConnId>,
    /// Well-known name ownership.
    pub names: NameRegistry,
    /// Match rules of all connections.
    pub matches: MatchIndex,
    /// Monitor connections.
    pub monitors: Vec<ConnId>,
    /// Expected replies.
    pub replies: ReplyTable,
    /// Active configuration.
    pub config: Config,
    /// Command-line settings.
    pub options: BusOptions,
    /// The bus ID returned by GetId.
    pub bus_id: String,
    /// The machine ID returned by Peer.GetMachineId.
    pub machine_id: String,
    /// uid the daemon runs as (privileged callers have this uid or 0).
    pub daemon_uid: u32,
    /// Connection counts by phase.
    pub counts: ConnCounts,
    /// Connections with newly queued output, to be flushed by the reactor.
    pub dirty: Vec<ConnId>,
    /// Connections the bus wants closed, with the reason for the log.
    pub closing: Vec<(ConnId, &'static str)>,
    /// Next unique-name number.
    next_unique: u64,
    /// Peak total of match rules.
    pub peak_match_rules: usize,
    /// Peak number of well-known names.
    pub peak_names: usize,

    /// Scratch for collecting broadcast receivers without allocating per message.
    scratch_receivers: Vec<ConnId>,
    /// Activatable services from the service directories.
    pub services: activation::ServiceDirs,
    /// Environment given to activated services.
    pub activation_env: activation::ActivationEnv,
    /// Pending service starts.
    pub starts: service_start::Starts,
    /// The time of the event being handled (set by the reactor's calls).
    pub now: std::time::Instant,
    /// Containers1 instances and their pending socket effects.
    pub containers: containers::Containers,
}

impl Bus {
    /// A bus with `config`.
    pub fn new(config: Config, options: BusOptions) -> Bus {
        let config_dirs = config.servicedirs.clone();
        Bus {
            peers: Slab::new(),
            out_pool: queue::OutPool::default(),
            reloads: 0,
            stats_serial: 0,
            conn_stats_serial: 0,
            unique: AHashMap::new(),
            names: NameRegistry::new(),
            matches: MatchIndex::new(),
            monitors: Vec::new(),
            replies: ReplyTable::default(),
            config,
            options,
            bus_id: crate::wire::auth::new_guid(),
            machine_id: read_machine_id(),
            daemon_uid: nix::unistd::geteuid().as_raw(),
            counts: ConnCounts::default(),
            dirty: Vec::new(),
            closing: Vec::new(),
            next_unique: 0,
            peak_match_rules: 0,
            peak_names: 0,
            scratch_receivers: Vec::new(),
            services: service_dirs(&config_dirs),
            activation_env: activation::ActivationEnv::new(),
            starts: service_start::Starts::default(),
            now: std::time::Instant::now(),
            containers: containers::Containers::default(),
        }
    }

    /// Register a newly accepted connection; returns its id (the reactor token).
    pub fn accept(&mut self, creds: Credentials) -> ConnId {
        let policy = self
            .config
            .policy
            .for_connection(creds.uid, creds.gids.as_deref().unwrap_or(&[]));
        self.counts.incomplete += 1;
        self.peers.insert(Peer::new(creds, policy))
    }

    /// Number of connections still authenticating or waiting for Hello.
    pub fn incomplete_count(&self) -> usize {
        self.counts.incomplete
    }

    /// Number of connections that completed Hello (monitors included).
    pub fn completed_count(&self) -> usize {
        self.counts.completed
    }

    /// Completed connections of `uid` (for `max_connections_per_user`).
    pub fn completed_for_uid(&self, uid: Option<u32>) -> usize {
        self.counts.by_uid.get(&uid).copied().unwrap_or(0)
    }

    /// SASL finished for `id`. Returns false if policy refuses the identity (the reactor
    /// then closes the connection).
    pub fn authenticated(&mut self, id: ConnId, uid: Option<u32>, unix_fd: bool) -> bool {
        let daemon_uid = self.daemon_uid;
        let Some(peer) = self.peers.get_mut(id) else {
            return false;
        };
        if uid.is_some() {
            peer.creds.uid = uid;
        }
        // A container socket accepts only its creator's uid.
        if let Some(n) = peer.container {
            if !self.containers.uid_allowed(n, peer.creds.uid) {
                log::info!(
                    "refusing uid {:?} on a container socket: not the container's owner",
                    peer.creds.uid
                );
                return false;
            }
        }
        let gids = peer.creds.gids.clone().unwrap_or_default();
        if !self
            .config
            .policy
            .allows_connect(peer.creds.uid, &gids, daemon_uid)
        {
            log::info!(
                "refusing connection from uid {:?}: not allowed by policy",
                peer.creds.uid
            );
            return false;
        }
        peer.policy = self.config.policy.for_connection(peer.creds.uid, &gids);
        peer.unix_fd = unix_fd;
        peer.phase = Phase::Authenticated;
        true
    }

    /// Allocate the next unique name.
    fn allocate_unique(&mut self) -> (u64, Rc<str>) {
        let n = self.next_unique;
        self.next_unique += 1;
        (n + 1, Rc::from(format!(":1.{n}")))
    }

    /// Queue `out` for `to`, charging its quota. Returns false (and queues nothing) when the
    /// receiver's outgoing queue is already over its byte or fd limit. One message may go
    /// past the limit, as in dbus-daemon.
    pub fn enqueue(&mut self, to: ConnId, out: Outgoing) -> bool {
        let max_bytes = self.config.limits.max_outgoing_bytes as usize;
        let max_fds = self.config.limits.max_outgoing_unix_fds as usize;
        let Some(peer) = self.peers.get_mut(to) else {
            return false;
        };
        if peer.out_bytes > max_bytes || (out.n_fds() > 0 && peer.out_fds > max_fds) {
            return false;
        }
        let mut out = out;
        if peer.container_header {
            containers::stamp_bus_message(&mut out);
        }
        let (len, n_fds) = (out.len(), out.n_fds());
        if !self.out_pool.push_back(&mut peer.out, out) {
            return false;
        }
        peer.out_bytes += len;
        peer.out_fds += n_fds;
        peer.peak_out_bytes = peer.peak_out_bytes.max(peer.out_bytes);
        peer.peak_out_fds = peer.peak_out_fds.max(peer.out_fds);
        if !peer.dirty {
            peer.dirty = true;
            self.dirty.push(to);
        }
        true
    }

    /// Ask the reactor to close `id`.
    pub fn close(&mut self, id: ConnId, why: &'static str) {
        self.closing.push((id, why));
    }

    /// Reload: apply a freshly parsed configuration (policy, limits, auth, service dirs).
    pub fn reload(&mut self, mut config: Config) {
        // Listen addresses never change on reload.
        config.listen = std::mem::take(&mut self.config.listen);
        self.services = service_dirs(&config.servicedirs);
        self.config = config;
        self.reloads += 1;
        self.driver_broadcast(
            "ActivatableServicesChanged",
            &crate::wire::marshal::BodyWriter::new(),
        );
        for (_, peer) in self.peers.iter_mut() {
            let gids = peer.creds.gids.clone().unwrap_or_default();
            peer.policy = self.config.policy.for_connection(peer.creds.uid, &gids);
        }
        log::info!("Reloaded configuration");
    }

    /// Re-read the configuration (ReloadConfig, SIGHUP). On failure the running
    /// configuration stays and the error is returned for the caller to report.
    pub fn reload_from_disk(&mut self) -> Result<(), crate::config::ConfigError> {
        let cfg = match &self.options.config_path {
            Some(path) => crate::config::load(path)?,
            None => crate::config::builtin_session(),
        };
        self.reload(cfg);
        Ok(())
    }

    /// Whether `id` may use privileged methods (its uid is the daemon's or 0).
    /// Contained connections are never privileged, whatever their uid.
    pub fn is_privileged(&self, id: ConnId) -> bool {
        if self.peers.get(id).is_some_and(|p| p.container.is_some()) {
            return false;
        }
        match self.peers.get(id).and_then(|p| p.creds.uid) {
            Some(uid) => uid == 0 || uid == self.daemon_uid,
            None => false,
        }
    }

    /// Resolve a bus name (unique or well-known) to the connection that owns it.
    pub fn resolve(&self, name: &str) -> Option<ConnId> {
        if name.starts_with(':') {
            self.unique.get(name).copied()
        } else {
            self.names.owner(name)
        }
    }

    /// Update the peak counters after a name or rule change.
    pub fn update_peaks(&mut self, id: ConnId) {
        let rules = self.matches.count(id);
        let names = self.names.count(id) + 1;
        if let Some(p) = self.peers.get_mut(id) {
            p.peak_match_rules = p.peak_match_rules.max(rules);
            p.peak_names = p.peak_names.max(names);
        }
        self.peak_match_rules = self.peak_match_rules.max(self.matches.total());
        self.peak_names = self.peak_names.max(self.names.names().count());
    }
}

/// The service-file table for `dirs`; `$XDG_RUNTIME_DIR/dbus-1/services` requires strict
/// `<name>.service` file names.
fn service_dirs(dirs: &[std::path::PathBuf]) -> activation::ServiceDirs {
    let strict: Vec<std::path::PathBuf> = std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| std::path::PathBuf::from(d).join("dbus-1/services"))
        .into_iter()
        .collect();
    let mut sd = activation::ServiceDirs::new(dirs.to_vec(), strict);
    sd.rescan();
    sd
}

/// The machine ID from /var/lib/dbus/machine-id or /etc/machine-id, else a random one.
fn read_machine_id() -> String {
    for path in ["/var/lib/dbus/machine-id", "/etc/machine-id"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return s.to_owned();
            }
        }
    }
    crate::wire::auth::new_guid()
}

#[cfg(test)]
mod tests;
