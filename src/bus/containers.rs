//! `org.freedesktop.DBus.Containers1`: per-app-container listening sockets whose
//! connections are permanently tagged with a container instance.
//!
//! The bus keeps the instance table and decides everything; the world creates the listening
//! socket when asked ([`World::listen_container`]), and the reactor drops it on
//! [`Effect::Unlisten`], watches `StopOnNotify` fds ([`Effect::WatchNotify`]) and stamps
//! accepted connections through [`Bus::accept_contained`].

use super::connection::{Credentials, Fds, OutHeader, Outgoing};
use super::driver::{Call, Reply};
use super::effect::{CloseReason, Effect};
use super::error::{BusError, BusResult, ErrorKind};
use super::filter::Filter;
use super::world::{ListenError, ListenStep, SocketName, SocketProblem, World};
use super::{Bus, ConnId, Effects, DRIVER_NAME};
use crate::wire::marshal::{BodyReader, BodyWriter, Value};
use crate::wire::message::{self, Message};
use ahash::AHashMap;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;

/// The interface name.
pub const CONTAINERS_IFACE: &str = "org.freedesktop.DBus.Containers1";
/// Instance paths are this prefix followed by the decimal instance number.
pub const INSTANCE_PATH_PREFIX: &str = "/org/freedesktop/DBus/Containers1/c";
/// Key added to `GetConnectionCredentials` for contained connections.
pub const CREDENTIALS_INSTANCE_KEY: &str = "org.freedesktop.DBus.Containers1.Instance";
/// Named arguments `AddServer` accepts (the `SupportedArguments` property).
pub const SUPPORTED_ARGUMENTS: &[&str] = &["Allow", "Socket", "StopOnDisconnect", "StopOnNotify"];

/// One container instance.
#[derive(Debug)]
pub struct Instance {
    /// Its object path.
    pub path: Rc<str>,
    /// uid of the creator: the only uid that may connect or stop it.
    pub owner_uid: u32,
    /// Snapshot of the creator's credentials (kept after the creator leaves).
    pub creator: Credentials,
    /// The creating connection while it is connected.
    pub creator_conn: Option<ConnId>,
    /// Container technology (interface-name syntax).
    pub container_type: String,
    /// App name (2021 `container_name`, 2024 `app_id`).
    pub name: String,
    /// 2024 API: the manager's per-run instance id ("" for 2021 instances).
    pub instance_id: String,
    /// Metadata `a{sv}`, echoed verbatim.
    pub metadata: Value,
    /// Socket file while listening (empty for a caller-provided socket in the abstract
    /// namespace, which has no file).
    pub socket_path: Option<PathBuf>,
    /// Connections accepted on its socket that are still open.
    pub connections: Vec<ConnId>,
    /// Set once the AddServer reply is queued: visible to queries, InstanceRemoved due.
    pub announced: bool,
    /// Stop listening when the creator disconnects (default true).
    pub stop_on_disconnect: bool,
    /// `StopOnNotify` fd: the instance stops when it hangs up.
    pub notify_fd: Option<OwnedFd>,
    /// The `Allow` rules (None: unfiltered, the connections may do what any may).
    pub filter: Option<Rc<Filter>>,
    /// Unique-name numbers of outside connections that sent this instance a message: its
    /// connections may see them (so a service's caller can be watched), race-free since
    /// unique numbers are never reused.
    pub contacts: ahash::AHashSet<u64>,
}

impl Instance {
    fn listening(&self) -> bool {
        self.socket_path.is_some()
    }
}

/// The instance table.
#[derive(Debug, Default)]
pub struct Containers {
    next_id: u64,
    /// Live instances by number.
    pub instances: BTreeMap<u64, Instance>,
    per_uid: AHashMap<u32, u32>,
    /// Paths whose InstanceRemoved is due (emitted after the current reply).
    removed: Vec<Rc<str>>,
}

impl Containers {
    /// The instance number of `path`, if it has the canonical form.
    pub fn parse_path(path: &str) -> Option<u64> {
        let digits = path.strip_prefix(INSTANCE_PATH_PREFIX)?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        digits.parse().ok()
    }

    /// The announced instance at `path`.
    pub fn by_path(&self, path: &str) -> Option<(u64, &Instance)> {
        let n = Self::parse_path(path)?;
        self.instances
            .get(&n)
            .filter(|i| i.announced)
            .map(|i| (n, i))
    }

    /// Number of live instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether no instance is alive.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Whether `uid` may authenticate on `instance`'s socket.
    pub fn uid_allowed(&self, instance: u64, uid: Option<u32>) -> bool {
        match (self.instances.get(&instance), uid) {
            (Some(i), Some(u)) => i.owner_uid == u,
            _ => false,
        }
    }

    /// Stop listening: have the reactor drop the socket and unlink it (unless the caller
    /// provided it). Returns whether it was listening.
    fn stop_listening(&mut self, n: u64, fx: &mut Effects) -> bool {
        let Some(inst) = self.instances.get_mut(&n) else {
            return false;
        };
        if inst.socket_path.take().is_none() {
            return false;
        }
        fx.push(Effect::Unlisten(n));
        true
    }

    /// Remove `n` if it neither listens nor has connections.
    fn maybe_remove(&mut self, n: u64, fx: &mut Effects) {
        let dead = self
            .instances
            .get(&n)
            .is_some_and(|i| !i.listening() && i.connections.is_empty());
        if dead {
            self.remove(n, fx);
        }
    }

    /// Drop `n` from every table; queue InstanceRemoved if it was announced.
    fn remove(&mut self, n: u64, fx: &mut Effects) {
        let Some(mut inst) = self.instances.remove(&n) else {
            return;
        };
        if let Some(c) = self.per_uid.get_mut(&inst.owner_uid) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_uid.remove(&inst.owner_uid);
            }
        }
        if let Some(fd) = inst.notify_fd.take() {
            fx.push(Effect::UnwatchNotify(n, fd));
        }
        if inst.announced {
            self.removed.push(inst.path.clone());
        }
    }
}

/// The error AddServer answers when the world could not create the socket, by what the
/// operating system said (dbus-daemon's mapping of errno to error names).
fn listen_error(e: &ListenError) -> BusError {
    match e.step {
        ListenStep::CreateDir => BusError::new(
            ErrorKind::Failed,
            format!(
                "Failed to create directory \"{}\": {}",
                e.path.display(),
                e.error
            ),
        ),
        ListenStep::Bind => {
            let kind = match e.error.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::FileNotFound,
                std::io::ErrorKind::PermissionDenied => ErrorKind::AccessDenied,
                std::io::ErrorKind::AddrInUse => ErrorKind::AddressInUse,
                _ => ErrorKind::Failed,
            };
            BusError::new(
                kind,
                format!(
                    "Failed to bind socket \"{}\": {}",
                    e.path.display(),
                    e.error
                ),
            )
        }
        ListenStep::Unsuitable(problem) => {
            let what = match problem {
                SocketProblem::NotSocket => format!("is not a socket ({})", e.error),
                SocketProblem::NotUnix => "is not an AF_UNIX socket".to_owned(),
                SocketProblem::NotStream => "is not a SOCK_STREAM socket".to_owned(),
                SocketProblem::NotListening => {
                    "is not listening (listen(2) was not called on it)".to_owned()
                }
                SocketProblem::Unnamed => "is not bound to an address".to_owned(),
                SocketProblem::RelativePath => "is bound to a relative path".to_owned(),
                SocketProblem::InUse => "is already a listening socket of this bus".to_owned(),
            };
            BusError::new(
                ErrorKind::InvalidArgs,
                format!("Named parameter Socket {what}"),
            )
        }
        ListenStep::Adopt => BusError::new(
            ErrorKind::Failed,
            format!(
                "Failed to listen on the socket of named parameter Socket: {}",
                e.error
            ),
        ),
    }
}

/// Our own duplicate (close-on-exec) of fd `index` of the message, for named argument
/// `arg`, independent of the message's fds.
fn dup_named_fd(fds: Option<&Fds>, arg: &str, index: u32) -> BusResult<OwnedFd> {
    let fd = fds.and_then(|f| f.get(index as usize)).ok_or_else(|| {
        BusError::new(
            ErrorKind::InvalidArgs,
            format!("{arg} refers to fd index {index}, which was not sent"),
        )
    })?;
    fd.try_clone()
        .map_err(|e| BusError::new(ErrorKind::Failed, format!("Cannot keep fd: {e}")))
}

/// Named arguments of AddServer, after validation.
#[derive(Debug, Default)]
struct NamedArgs {
    stop_on_disconnect: Option<bool>,
    stop_on_notify: Option<u32>,
    /// `Allow`: the instance's filter rules.
    allow: Option<Filter>,
    /// `Socket`: fd index of a caller-provided listening socket.
    socket: Option<u32>,
}

fn parse_named_args(v: &Value) -> BusResult<NamedArgs> {
    let mut out = NamedArgs::default();
    let Value::Dict(_, _, entries) = v else {
        return Err(BusError::new(
            ErrorKind::InvalidArgs,
            "Named arguments must be a{sv}",
        ));
    };
    for (k, val) in entries {
        let (Value::Str(key), Value::Variant(inner)) = (k, val) else {
            return Err(BusError::new(
                ErrorKind::InvalidArgs,
                "Named arguments must be a{sv}",
            ));
        };
        let wrong_type = |t: &str| {
            BusError::new(
                ErrorKind::InvalidArgs,
                format!("Named parameter {key} must have type '{t}'"),
            )
        };
        match (key.as_str(), &**inner) {
            ("StopOnDisconnect", Value::Bool(b)) => out.stop_on_disconnect = Some(*b),
            ("StopOnDisconnect", _) => return Err(wrong_type("b")),
            ("StopOnNotify", Value::Fd(i)) => out.stop_on_notify = Some(*i),
            ("StopOnNotify", _) => return Err(wrong_type("h")),
            ("Allow", v) => out.allow = Some(Filter::from_value(v)?),
            ("Socket", Value::Fd(i)) => out.socket = Some(*i),
            ("Socket", _) => return Err(wrong_type("h")),
            _ => {
                return Err(BusError::new(
                    ErrorKind::InvalidArgs,
                    format!("Named parameter {key} is not understood"),
                ))
            }
        }
    }
    Ok(out)
}

/// Which AddServer generation a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `ssa{sv}a{sv}` → `oays`.
    V2021,
    /// `sssa{sv}a{sv}` → `oa{sv}`.
    V2024,
}

/// The 2024 AddServer signature.
pub const ADD_SERVER_2024_SIG: &str = "sssa{sv}a{sv}";

// The Containers1 entries of the driver's method table (interface, path, access and
// signature were checked by the dispatcher).

/// AddServer, both generations.
pub(super) fn add_server(c: &mut Call<'_>) -> BusResult<Reply> {
    Ok(match c.bus.add_server(c.id, c.msg, c.fds, c.world)? {
        Some(body) => Reply::Body(body),
        None => Reply::Sent,
    })
}

/// StopInstance: stop listening and disconnect the instance's connections.
pub(super) fn stop_instance(c: &mut Call<'_>) -> BusResult<Reply> {
    c.bus.stop(c.id, c.msg, true).map(Reply::Body)
}

/// StopListening: stop listening, keep the connections.
pub(super) fn stop_listening(c: &mut Call<'_>) -> BusResult<Reply> {
    c.bus.stop(c.id, c.msg, false).map(Reply::Body)
}

/// GetConnectionInstance (2021 API).
pub(super) fn connection_instance(c: &mut Call<'_>) -> BusResult<Reply> {
    c.bus
        .connection_instance(c.id, c.msg, false)
        .map(Reply::Body)
}

/// GetConnectionInfo (2024 API).
pub(super) fn connection_info(c: &mut Call<'_>) -> BusResult<Reply> {
    c.bus
        .connection_instance(c.id, c.msg, true)
        .map(Reply::Body)
}

/// GetInstanceInfo.
pub(super) fn instance_info(c: &mut Call<'_>) -> BusResult<Reply> {
    c.bus.instance_info(c.msg).map(Reply::Body)
}

/// RequestHeader: the reply is queued before the flag takes effect, so it carries no
/// header field 10 itself.
pub(super) fn request_header(c: &mut Call<'_>) -> BusResult<Reply> {
    if !c.msg.no_reply_expected() {
        c.bus.reply(c.id, c.msg, &BodyWriter::new());
    }
    if let Some(p) = c.bus.peers.get_mut(c.id) {
        p.container_header = true;
    }
    Ok(Reply::Sent)
}

impl Bus {
    /// AddServer, both generations. Sends the reply itself, then announces the instance.
    fn add_server(
        &mut self,
        id: ConnId,
        msg: &Message,
        fds: Option<&Fds>,
        world: &mut dyn World,
    ) -> BusResult<Option<BodyWriter>> {
        let api = if msg.signature() == ADD_SERVER_2024_SIG {
            Api::V2024
        } else {
            Api::V2021
        };
        // The number is consumed even if a later step fails: paths are never reused.
        let n = self.containers.next_id;
        if n == u64::MAX {
            return Err(BusError::new(
                ErrorKind::LimitsExceeded,
                "Too many containers created during the lifetime of this bus",
            ));
        }
        self.containers.next_id = n + 1;
        let Some(creator) = self.peers.get(id).map(|p| p.creds.clone()) else {
            return Ok(None);
        };
        let Some(uid) = creator.uid else {
            return Err(BusError::new(
                ErrorKind::Failed,
                "Unable to determine user ID of caller",
            ));
        };
        let mut r = BodyReader::new(msg);
        let container_type = r.str()?;
        let name = r.str()?;
        let instance_id = match api {
            Api::V2024 => r.str()?,
            Api::V2021 => "",
        };
        // Size of the serialized metadata, without the alignment before it.
        let before = r.offset().next_multiple_of(4);
        let metadata = r.value()?;
        let meta_len = r.offset().saturating_sub(before);
        let named = r.value()?;
        if !crate::wire::names::is_valid_interface(container_type) {
            return Err(BusError::new(
                ErrorKind::InvalidArgs,
                format!("The container type identifier must have the syntax of an interface name, not \"{container_type}\""),
            ));
        }
        let limits = &self.config.limits;
        let total = meta_len + container_type.len() + name.len() + instance_id.len();
        let max_meta = limits.max_container_metadata_bytes as usize;
        if total > max_meta {
            log::warn!("AddServer refused: metadata of {total} bytes exceeds max_container_metadata_bytes={max_meta}");
            return Err(BusError::new(
                ErrorKind::LimitsExceeded,
                format!("Connection is not allowed to set more than {max_meta} bytes of container metadata (max_container_metadata_bytes)"),
            ));
        }
        let named = parse_named_args(&named)?;
        let notify_fd = named
            .stop_on_notify
            .map(|i| dup_named_fd(fds, "StopOnNotify", i))
            .transpose()?;
        let provided = named
            .socket
            .map(|i| dup_named_fd(fds, "Socket", i))
            .transpose()?;
        let max = limits.max_containers as usize;
        if self.containers.len() >= max {
            log::warn!("AddServer refused: max_containers={max} reached");
            return Err(BusError::new(
                ErrorKind::LimitsExceeded,
                format!("Too many containers ({max}) (max_containers)"),
            ));
        }
        let per_user = limits.max_containers_per_user;
        let mine = self.containers.per_uid.get(&uid).copied().unwrap_or(0);
        if per_user == 0 || mine >= per_user {
            log::warn!("AddServer refused: uid {uid} has max_containers_per_user={per_user}");
            return Err(BusError::new(
                ErrorKind::LimitsExceeded,
                format!(
                    "Too many containers for user {uid} ({per_user}) (max_containers_per_user)"
                ),
            ));
        }
        let (reached_at, guid) = world
            .listen_container(n, provided)
            .map_err(|e| listen_error(&e))?;
        // An abstract socket has no file: the 2021 reply's path is empty (just the NUL), and
        // the address, which clients should use anyway, names it.
        let (socket_path, address) = match reached_at {
            SocketName::Path(p) => {
                let a = crate::wire::address::format_unix_path(&p, &guid);
                (p, a)
            }
            SocketName::Abstract(a) => (
                PathBuf::new(),
                crate::wire::address::format_unix_abstract(&a, &guid),
            ),
        };
        let path: Rc<str> = Rc::from(format!("{INSTANCE_PATH_PREFIX}{n}"));
        let raw_notify = notify_fd.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        self.containers.instances.insert(
            n,
            Instance {
                path: path.clone(),
                owner_uid: uid,
                creator,
                creator_conn: Some(id),
                container_type: container_type.to_owned(),
                name: name.to_owned(),
                instance_id: instance_id.to_owned(),
                metadata,
                socket_path: Some(socket_path.clone()),
                connections: Vec::new(),
                announced: false,
                stop_on_disconnect: named.stop_on_disconnect.unwrap_or(true),
                notify_fd,
                filter: named.allow.map(Rc::new),
                contacts: ahash::AHashSet::new(),
            },
        );
        *self.containers.per_uid.entry(uid).or_insert(0) += 1;
        if let Some(fd) = raw_notify {
            self.effects.push(Effect::WatchNotify(n, fd));
        }
        let mut out = BodyWriter::new();
        out.object_path(&path);
        match api {
            Api::V2021 => {
                let mut bytes = socket_path.as_os_str().as_encoded_bytes().to_vec();
                bytes.push(0);
                out.byte_array(&bytes).str(&address);
            }
            Api::V2024 => {
                out.array("{sv}", |a| {
                    a.dict_entry(|e| {
                        e.str("Address").variant("s", |v| {
                            v.str(&address);
                        });
                    });
                });
            }
        }
        if !msg.no_reply_expected() {
            self.reply(id, msg, &out);
        }
        if let Some(inst) = self.containers.instances.get_mut(&n) {
            inst.announced = true;
        }
        log::info!("container {path} ({container_type} \"{name}\") listening on {address}");
        Ok(None)
    }

    /// StopListening / StopInstance.
    fn stop(&mut self, id: ConnId, msg: &Message, instance: bool) -> BusResult<BodyWriter> {
        let path = BodyReader::new(msg).str()?;
        let Some((n, inst)) = self.containers.by_path(path) else {
            return Err(BusError::new(
                ErrorKind::NotContainer,
                format!("There is no container with path '{path}'"),
            ));
        };
        let Some(uid) = self.peers.get(id).and_then(|p| p.creds.uid) else {
            return Err(BusError::new(
                ErrorKind::Failed,
                "Unable to determine user ID of caller",
            ));
        };
        if uid != inst.owner_uid {
            return Err(BusError::new(
                ErrorKind::AccessDenied,
                format!(
                    "User {uid} cannot stop a container server started by user {}",
                    inst.owner_uid
                ),
            ));
        }
        let conns = if instance {
            inst.connections.clone()
        } else {
            Vec::new()
        };
        self.containers.stop_listening(n, &mut self.effects);
        for c in conns {
            self.close(c, CloseReason::ContainerStopped);
        }
        self.containers.maybe_remove(n, &mut self.effects);
        Ok(BodyWriter::new())
    }

    /// GetConnectionInstance (`oa{sv}ssa{sv}`) or, with `info`, the 2024
    /// GetConnectionInfo (`oa{sv}sssa{sv}`).
    fn connection_instance(
        &self,
        caller: ConnId,
        msg: &Message,
        info: bool,
    ) -> BusResult<BodyWriter> {
        let name = BodyReader::new(msg).str()?;
        if name == DRIVER_NAME {
            return Err(BusError::new(
                ErrorKind::NotContainer,
                "The message bus is not in a container",
            ));
        }
        let Some(c) = self.resolve_for(caller, name) else {
            return Err(BusError::new(
                ErrorKind::NameHasNoOwner,
                format!("Could not get owner of name '{name}': no such name"),
            ));
        };
        let inst = self
            .peers
            .get(c)
            .and_then(|p| p.container)
            .and_then(|n| self.containers.instances.get(&n))
            .ok_or_else(|| {
                BusError::new(
                    ErrorKind::NotContainer,
                    format!("Connection '{name}' is not in a container"),
                )
            })?;
        let mut out = BodyWriter::new();
        out.object_path(&inst.path);
        write_instance(&mut out, inst, info);
        Ok(out)
    }

    /// GetInstanceInfo (`a{sv}ssa{sv}`).
    fn instance_info(&self, msg: &Message) -> BusResult<BodyWriter> {
        let path = BodyReader::new(msg).str()?;
        let Some((_, inst)) = self.containers.by_path(path) else {
            return Err(BusError::new(
                ErrorKind::NotContainer,
                format!("There is no container with path '{path}'"),
            ));
        };
        let mut out = BodyWriter::new();
        write_instance(&mut out, inst, false);
        Ok(out)
    }

    /// A connection arrived on `instance`'s socket. Returns None (the reactor drops the
    /// socket) when the instance stopped listening or has `max_connections_per_container`.
    pub fn accept_contained(&mut self, creds: Credentials, instance: u64) -> Option<ConnId> {
        let max = self.config.limits.max_connections_per_container as usize;
        let inst = self.containers.instances.get(&instance)?;
        if !inst.listening() {
            return None;
        }
        if inst.connections.len() >= max {
            log::warn!(
                "refusing connection to container {}: max_connections_per_container={max} reached",
                inst.path
            );
            return None;
        }
        let filtered = inst.filter.is_some();
        let id = self.accept(creds);
        if let Some(p) = self.peers.get_mut(id) {
            p.container = Some(instance);
            p.filtered = filtered;
        }
        if let Some(inst) = self.containers.instances.get_mut(&instance) {
            inst.connections.push(id);
        }
        Some(id)
    }

    /// Container bookkeeping for a connection that is going away (before it leaves the
    /// connection table).
    pub(super) fn containers_disconnected(&mut self, id: ConnId) {
        if self.containers.is_empty() {
            return;
        }
        if let Some(n) = self.peers.get(id).and_then(|p| p.container) {
            if let Some(inst) = self.containers.instances.get_mut(&n) {
                inst.connections.retain(|&c| c != id);
            }
            self.containers.maybe_remove(n, &mut self.effects);
        }
        let created: Vec<(u64, bool)> = self
            .containers
            .instances
            .iter()
            .filter(|(_, i)| i.creator_conn == Some(id))
            .map(|(&n, i)| (n, i.stop_on_disconnect))
            .collect();
        for (n, stop) in created {
            if let Some(inst) = self.containers.instances.get_mut(&n) {
                inst.creator_conn = None;
            }
            if stop {
                self.containers.stop_listening(n, &mut self.effects);
                self.containers.maybe_remove(n, &mut self.effects);
            }
        }
    }

    /// A `StopOnNotify` fd hung up: stop the instance as StopInstance would.
    pub fn container_notify_hangup(&mut self, instance: u64) {
        let Some(inst) = self.containers.instances.get_mut(&instance) else {
            return;
        };
        if let Some(fd) = inst.notify_fd.take() {
            self.effects.push(Effect::UnwatchNotify(instance, fd));
        }
        let conns = inst.connections.clone();
        self.containers.stop_listening(instance, &mut self.effects);
        for c in conns {
            self.close(c, CloseReason::ContainerStopped);
        }
        self.containers.maybe_remove(instance, &mut self.effects);
        self.run_deferred();
    }

    /// The reactor gave up on `instance`'s caller-provided socket (the caller made it
    /// blocking, which could hang the bus): stop listening as StopListening would; its
    /// connections stay.
    pub fn container_socket_failed(&mut self, instance: u64) {
        self.containers.stop_listening(instance, &mut self.effects);
        self.containers.maybe_remove(instance, &mut self.effects);
        self.run_deferred();
    }

    /// Emit the InstanceRemoved signals that became due.
    pub(super) fn emit_instance_removed(&mut self) {
        if self.containers.removed.is_empty() {
            return;
        }
        let removed = std::mem::take(&mut self.containers.removed);
        for path in removed {
            log::info!("container {path} removed");
            let mut b = BodyWriter::new();
            b.object_path(&path);
            self.driver_broadcast_iface(CONTAINERS_IFACE, "InstanceRemoved", &b);
        }
    }

    /// The instance path of a contained connection.
    pub fn container_path_of(&self, id: ConnId) -> Option<&Rc<str>> {
        let n = self.peers.get(id)?.container?;
        self.containers.instances.get(&n).map(|i| &i.path)
    }
}

/// Give a bus-originated message field 10 = `/` for a receiver that called RequestHeader.
/// Replies to destination-less Peer calls (no SENDER, no DESTINATION) are left alone.
pub(super) fn stamp_bus_message(out: &mut Outgoing) {
    if !matches!(out.header, OutHeader::None) || out.body.start != 0 {
        return;
    }
    let Ok(m) = Message::parse(out.data.clone(), out.n_fds()) else {
        return;
    };
    if m.destination().is_none() && m.msg_type != message::SIGNAL {
        return;
    }
    out.header = OutHeader::Relay(m.relay_header(DRIVER_NAME, Some("/")));
    out.body = m.body_range().start as u32..out.data.len() as u32;
}

fn write_instance(out: &mut BodyWriter, inst: &Instance, info: bool) {
    inst.creator.write_dict(out, None, false);
    out.str(&inst.container_type).str(&inst.name);
    if info {
        out.str(&inst.instance_id);
    }
    out.value(&inst.metadata);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_paths() {
        assert_eq!(
            Containers::parse_path("/org/freedesktop/DBus/Containers1/c0"),
            Some(0)
        );
        assert_eq!(
            Containers::parse_path("/org/freedesktop/DBus/Containers1/c42"),
            Some(42)
        );
        for bad in [
            "/org/freedesktop/DBus/Containers1/c",
            "/org/freedesktop/DBus/Containers1/c01",
            "/org/freedesktop/DBus/Containers1/c1x",
            "/org/freedesktop/DBus/Containers1/c-1",
            "/org/freedesktop/DBus/Containers1/c99999999999999999999999",
            "/org/freedesktop/DBus/Containers1",
            "/nope",
            "",
        ] {
            assert_eq!(Containers::parse_path(bad), None, "{bad}");
        }
    }

    fn dict(entries: Vec<(&str, Value)>) -> Value {
        Value::Dict(
            "s".into(),
            "v".into(),
            entries
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), Value::Variant(Box::new(v))))
                .collect(),
        )
    }

    #[test]
    fn named_arguments() {
        let none = parse_named_args(&dict(vec![])).expect("empty");
        assert_eq!((none.stop_on_disconnect, none.stop_on_notify), (None, None));
        assert!(none.allow.is_none());
        let some = parse_named_args(&dict(vec![
            ("StopOnDisconnect", Value::Bool(false)),
            ("StopOnNotify", Value::Fd(0)),
            ("Allow", Value::Array("(usos)".into(), vec![])),
            ("Socket", Value::Fd(1)),
        ]))
        .expect("valid");
        assert_eq!(
            (some.stop_on_disconnect, some.stop_on_notify, some.socket),
            (Some(false), Some(0), Some(1))
        );
        assert!(some.allow.is_some_and(|f| f.is_empty()));
        let e = parse_named_args(&dict(vec![(
            "ThisArgumentIsntImplemented",
            Value::Bool(false),
        )]))
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgs);
        assert!(e.text.contains("ThisArgumentIsntImplemented"));
        for wrong in [
            ("StopOnDisconnect", Value::U32(1)),
            ("StopOnNotify", Value::U32(0)),
            ("Socket", Value::U32(0)),
            ("Socket", Value::Str("/run/x".into())),
        ] {
            let e = parse_named_args(&dict(vec![wrong])).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgs);
        }
        assert!(parse_named_args(&Value::U32(1)).is_err());
    }

    #[test]
    fn table_bookkeeping() {
        let mut c = Containers::default();
        let inst = |n: u64, listening: bool| Instance {
            path: Rc::from(format!("{INSTANCE_PATH_PREFIX}{n}")),
            owner_uid: 7,
            creator: Credentials::default(),
            creator_conn: None,
            container_type: "a.b".into(),
            name: String::new(),
            instance_id: String::new(),
            metadata: dict(vec![]),
            socket_path: listening.then(|| PathBuf::from("/nonexistent/sock")),
            connections: vec![3],
            announced: true,
            stop_on_disconnect: true,
            notify_fd: None,
            filter: None,
            contacts: ahash::AHashSet::new(),
        };
        c.instances.insert(0, inst(0, true));
        c.per_uid.insert(7, 1);
        assert!(c.uid_allowed(0, Some(7)));
        assert!(!c.uid_allowed(0, Some(8)));
        assert!(!c.uid_allowed(0, None));
        assert!(!c.uid_allowed(1, Some(7)));
        assert!(c.by_path("/org/freedesktop/DBus/Containers1/c0").is_some());
        // Still has a connection: stays after stopping.
        let mut fx = Effects::default();
        assert!(c.stop_listening(0, &mut fx));
        assert!(!c.stop_listening(0, &mut fx));
        assert!(matches!(fx.pop(), Some(Effect::Unlisten(0))));
        assert!(fx.pop().is_none());
        c.maybe_remove(0, &mut fx);
        assert_eq!(c.len(), 1);
        if let Some(i) = c.instances.get_mut(&0) {
            i.connections.clear();
        }
        c.maybe_remove(0, &mut fx);
        assert!(c.is_empty());
        assert!(c.per_uid.is_empty());
        assert_eq!(c.removed.len(), 1);
        assert!(c.by_path("/org/freedesktop/DBus/Containers1/c0").is_none());
    }
}
