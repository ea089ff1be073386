//! A sans-IO test harness for the bus core, in the spirit of quinn-proto's test `Pair`.
//!
//! Everything that touches [`Bus`] internals lives in this one file, so that when the
//! reactor↔bus seam changes only this file has to follow. The test files next to it use
//! only the API below:
//!
//! * [`Harness::new`] / [`Harness::with_limits`] / [`Harness::with_config_xml`] build a bus
//!   (no service directories, an allow-everything policy unless the XML says otherwise).
//! * [`Harness::connect`] accepts and authenticates a connection ([`Client`] handle);
//!   [`Harness::hello`] registers it; [`Harness::client`] does both.
//! * [`Harness::send`], [`Harness::call`], [`Harness::driver`], [`Harness::send_raw`] feed
//!   messages in; [`Harness::recv`] / [`Harness::recv_all`] decode, in order, what the bus
//!   queued for a client into owned [`Msg`] values. Nothing is read unless a test asks, so a
//!   client that never calls `recv` is a receiver that does not read.
//! * [`Harness::advance`] moves the virtual clock and runs the bus's timers.
//! * [`Harness::disconnect`] / [`Harness::is_closed`] for connection lifecycle.
//! * [`Harness::add_server`] / [`Harness::accept_on_instance`] for Containers1,
//!   [`Harness::poll_notify_fds`] for `StopOnNotify`, [`Harness::provided_socket_outcome`]
//!   / [`Harness::provided_socket`] for `Socket`.
//! * [`Harness::with_services`], [`Harness::spawned`] and the `service_*` outcome methods
//!   for activation (nothing is executed).
//!
//! After every event the harness carries out the bus's [`Effect`]s as the reactor does
//! ([`Harness::pump`]): closes the connections the bus asked to close (what was queued for
//! them stays receivable, as the reactor flushes before closing), keeps the table of
//! listening container sockets and watched notify fds, and records spawn requests. Then it
//! releases what gone connections left queued, a [`REAP_BUDGET`] piece per turn as the
//! reactor does, until none is left (the reactor's turns run between any two events a
//! test makes), checking the invariants after each piece; [`Harness::hold_reaping`] leaves
//! the turns to the test ([`Harness::reap_turn`]).
//!
//! The world the bus sees is [`HarnessWorld`]: container sockets are names in a table,
//! service and configuration files live in memory ([`MemFs`]). No sockets, no files, no
//! sleeping, no threads.

use crate::bus::activation::{FileStamp, ServiceFs};
use crate::bus::connection::{Credentials, Outgoing, Phase};
pub use crate::bus::delivery::REAP_BUDGET;
use crate::bus::world::{ListenError, ListenStep, ProcessInfo, SocketName, SocketProblem, World};
use crate::bus::{Bus, BusOptions, Clock, CloseReason, ConnId, Effect, HostFacts};
use crate::config::Config;
pub use crate::wire::marshal::{BodyReader, BodyWriter, MessageBuilder, Value};
use crate::wire::message::Message;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The driver's bus name.
pub const DBUS: &str = "org.freedesktop.DBus";
/// The driver's object path.
pub const DBUS_PATH: &str = "/org/freedesktop/DBus";
/// The driver's main interface.
pub const DBUS_IFACE: &str = "org.freedesktop.DBus";
/// The Containers1 interface.
pub const C1: &str = "org.freedesktop.DBus.Containers1";
/// The `Properties` interface.
pub const PROPS: &str = "org.freedesktop.DBus.Properties";

/// uid of ordinary clients made by [`Harness::connect`] / [`Harness::client`].
pub const USER_UID: u32 = 1000;
/// Another unprivileged uid.
pub const OTHER_UID: u32 = 1001;
/// The uid the bus believes it runs as: clients with this uid (or 0) are privileged.
pub const DAEMON_UID: u32 = 4242;

/// Message types.
pub mod mtype {
    pub use crate::wire::message::{ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL};
}

/// Header flags.
pub use crate::wire::message::flags as flag;

/// D-Bus error names used by the tests.
pub mod err {
    /// org.freedesktop.DBus.Error.Failed
    pub const FAILED: &str = "org.freedesktop.DBus.Error.Failed";
    /// org.freedesktop.DBus.Error.AccessDenied
    pub const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
    /// org.freedesktop.DBus.Error.InvalidArgs
    pub const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
    /// org.freedesktop.DBus.Error.NameHasNoOwner
    pub const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";
    /// org.freedesktop.DBus.Error.ServiceUnknown
    pub const SERVICE_UNKNOWN: &str = "org.freedesktop.DBus.Error.ServiceUnknown";
    /// org.freedesktop.DBus.Error.NoReply
    pub const NO_REPLY: &str = "org.freedesktop.DBus.Error.NoReply";
    /// org.freedesktop.DBus.Error.LimitsExceeded
    pub const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
    /// org.freedesktop.DBus.Error.MatchRuleInvalid
    pub const MATCH_RULE_INVALID: &str = "org.freedesktop.DBus.Error.MatchRuleInvalid";
    /// org.freedesktop.DBus.Error.MatchRuleNotFound
    pub const MATCH_RULE_NOT_FOUND: &str = "org.freedesktop.DBus.Error.MatchRuleNotFound";
    /// org.freedesktop.DBus.Error.UnknownMethod
    pub const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
    /// org.freedesktop.DBus.Error.UnknownInterface
    pub const UNKNOWN_INTERFACE: &str = "org.freedesktop.DBus.Error.UnknownInterface";
    /// org.freedesktop.DBus.Error.UnknownProperty
    pub const UNKNOWN_PROPERTY: &str = "org.freedesktop.DBus.Error.UnknownProperty";
    /// org.freedesktop.DBus.Error.PropertyReadOnly
    pub const PROPERTY_READ_ONLY: &str = "org.freedesktop.DBus.Error.PropertyReadOnly";
    /// org.freedesktop.DBus.Error.NotContainer
    pub const NOT_CONTAINER: &str = "org.freedesktop.DBus.Error.NotContainer";
}

/// The default configuration: the stock session policy (everything allowed, and any uid may
/// connect, so privileged and unprivileged clients can meet) with the daemon's default limits
/// and no service directories, so lookups never touch the disk.
pub const DEFAULT_CONFIG: &str = r#"<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

thread_local! {
    /// The warnings logged on this thread (each test runs on its own thread), as
    /// `LEVEL message`.
    static WARNINGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// A logger keeping warnings and errors per thread, so that a test can check the log line
/// the bus wrote for what it just did ([`Harness::take_warnings`]).
struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            WARNINGS.with(|w| w.borrow_mut().push(line));
        }
    }
    fn flush(&self) {}
}

static LOGGER: CaptureLogger = CaptureLogger;

/// Install [`CaptureLogger`] once for the test binary.
fn capture_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    });
}

/// Handle of one client connection of a [`Harness`]. Handles are never reused, even when
/// the bus reuses the connection's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(usize);

/// Harness-side state of one client.
struct ClientState {
    /// The bus's id for it (valid while `closed` is None).
    conn: ConnId,
    /// Why it was closed (Some once gone).
    closed: Option<&'static str>,
    /// Last serial used.
    serial: u32,
    /// Unique name after Hello.
    unique: Option<String>,
    /// Messages taken off the bus's queue but not yet returned by `recv` (taken when the
    /// bus closed the connection: the reactor would have flushed them first).
    inbox: VecDeque<Msg>,
}

/// One message the bus queued for a client, decoded and owned.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Message type ([`mtype`]).
    pub msg_type: u8,
    /// Flags byte.
    pub flags: u8,
    /// Serial.
    pub serial: u32,
    /// REPLY_SERIAL.
    pub reply_serial: Option<u32>,
    /// SENDER.
    pub sender: Option<String>,
    /// DESTINATION.
    pub destination: Option<String>,
    /// PATH.
    pub path: Option<String>,
    /// INTERFACE.
    pub interface: Option<String>,
    /// MEMBER.
    pub member: Option<String>,
    /// ERROR_NAME.
    pub error_name: Option<String>,
    /// SIGNATURE ("" if none).
    pub signature: String,
    /// Header field 10 (CONTAINER_INSTANCE), stamped for RequestHeader callers.
    pub container_instance: Option<String>,
    /// Unix fds that came with it.
    pub n_fds: usize,
    /// Its size on the wire in bytes (what it occupied in the bus's outgoing queue).
    pub len: usize,
    /// Every header field code present, in wire order.
    pub field_codes: Vec<u8>,
    msg: Message,
}

impl Msg {
    /// A reader over the body.
    pub fn body(&self) -> BodyReader<'_> {
        BodyReader::new(&self.msg)
    }

    /// Every top-level argument, as owned values.
    pub fn args(&self) -> Vec<Value> {
        let mut r = self.body();
        let mut v = Vec::new();
        while !r.at_end() {
            v.push(r.value().expect("body argument"));
        }
        v
    }

    /// Argument `n`, which must be a string (or object path / signature).
    pub fn arg_str(&self, n: usize) -> String {
        match self.args().get(n) {
            Some(Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s)) => s.clone(),
            other => panic!("argument {n} is not a string: {other:?} in {self:?}"),
        }
    }

    /// Argument `n`, which must be a UINT32.
    pub fn arg_u32(&self, n: usize) -> u32 {
        match self.args().get(n) {
            Some(Value::U32(v)) => *v,
            other => panic!("argument {n} is not a u32: {other:?} in {self:?}"),
        }
    }

    /// Argument `n`, which must be a BOOLEAN.
    pub fn arg_bool(&self, n: usize) -> bool {
        match self.args().get(n) {
            Some(Value::Bool(v)) => *v,
            other => panic!("argument {n} is not a bool: {other:?} in {self:?}"),
        }
    }

    /// Argument `n`, which must be an array of strings.
    pub fn arg_strs(&self, n: usize) -> Vec<String> {
        match self.args().get(n) {
            Some(Value::Array(_, items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => s.clone(),
                    other => panic!("array item is not a string: {other:?}"),
                })
                .collect(),
            other => panic!("argument {n} is not an array: {other:?} in {self:?}"),
        }
    }

    /// Argument `n`, an `a{sv}`, as (key, unwrapped value) pairs in order.
    pub fn arg_dict(&self, n: usize) -> Vec<(String, Value)> {
        match self.args().get(n) {
            Some(Value::Dict(_, _, entries)) => entries
                .iter()
                .map(|(k, v)| {
                    let Value::Str(k) = k else {
                        panic!("dict key is not a string: {k:?}")
                    };
                    let v = match v {
                        Value::Variant(inner) => (**inner).clone(),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            other => panic!("argument {n} is not a dict: {other:?} in {self:?}"),
        }
    }

    /// Whether this is a METHOD_RETURN.
    pub fn is_return(&self) -> bool {
        self.msg_type == mtype::METHOD_RETURN
    }

    /// Whether this is the signal `member` from the bus driver.
    pub fn is_driver_signal(&self, member: &str) -> bool {
        self.msg_type == mtype::SIGNAL
            && self.sender.as_deref() == Some(DBUS)
            && self.member.as_deref() == Some(member)
    }

    /// Assert this is a METHOD_RETURN; returns it.
    #[track_caller]
    pub fn expect_return(self) -> Msg {
        assert_eq!(
            self.msg_type,
            mtype::METHOD_RETURN,
            "not a return: {self:#?}"
        );
        self
    }

    /// Assert this is an ERROR named `name`; returns it.
    #[track_caller]
    pub fn expect_error(self, name: &str) -> Msg {
        assert_eq!(self.msg_type, mtype::ERROR, "not an error: {self:#?}");
        assert_eq!(self.error_name.as_deref(), Some(name), "{self:#?}");
        self
    }

    /// A short label for order assertions: "return", "error:<name>", "signal:<member>",
    /// "call:<member>".
    pub fn kind(&self) -> String {
        match self.msg_type {
            mtype::METHOD_RETURN => "return".into(),
            mtype::ERROR => format!("error:{}", self.error_name.as_deref().unwrap_or("")),
            mtype::SIGNAL => format!("signal:{}", self.member.as_deref().unwrap_or("")),
            _ => format!("call:{}", self.member.as_deref().unwrap_or("")),
        }
    }
}

/// A METHOD_CALL builder a client would send (flags 0: a reply is expected).
pub fn method_call(
    dest: Option<&str>,
    path: &str,
    iface: Option<&str>,
    member: &str,
) -> MessageBuilder {
    let b = MessageBuilder::method_call(path, iface, member).flags(0);
    match dest {
        Some(d) => b.destination(d),
        None => b,
    }
}

/// A SIGNAL builder a client would send (flags 0), broadcast unless `dest` is given.
pub fn signal(dest: Option<&str>, path: &str, iface: &str, member: &str) -> MessageBuilder {
    let b = MessageBuilder::signal(path, iface, member).flags(0);
    match dest {
        Some(d) => b.destination(d),
        None => b,
    }
}

/// A METHOD_RETURN answering `call` (addressed to its sender).
pub fn reply_to(call: &Msg) -> MessageBuilder {
    let b = MessageBuilder::method_return(call.serial).flags(0);
    match &call.sender {
        Some(s) => b.destination(s),
        None => b,
    }
}

/// An ERROR named `name` answering `call` (addressed to its sender).
pub fn error_to(call: &Msg, name: &str) -> MessageBuilder {
    let b = MessageBuilder::error(name, call.serial).flags(0);
    match &call.sender {
        Some(s) => b.destination(s),
        None => b,
    }
}

/// A body with one string.
pub fn s(v: &str) -> BodyWriter {
    let mut b = BodyWriter::new();
    b.str(v);
    b
}

/// A body with a string and a u32 (RequestName).
pub fn su(v: &str, n: u32) -> BodyWriter {
    let mut b = BodyWriter::new();
    b.str(v).u32(n);
    b
}

/// An empty body.
pub fn empty() -> BodyWriter {
    BodyWriter::new()
}

/// `bytes` (a little-endian message) with one more header field: `code`, an OBJECT_PATH
/// `value`. For forging fields only the bus may set (e.g. 10, CONTAINER_INSTANCE).
pub fn with_header_field(bytes: &[u8], code: u8, value: &str) -> Vec<u8> {
    assert_eq!(bytes[0], b'l', "little-endian messages only");
    let fields_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let fields_end = 16 + fields_len;
    let body_start = fields_end.next_multiple_of(8);
    let mut out = bytes[..fields_end].to_vec();
    out.resize(out.len().next_multiple_of(8), 0);
    out.extend_from_slice(&[code, 1, b'o', 0]);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    let new_len = u32::try_from(out.len() - 16).expect("header size");
    out[12..16].copy_from_slice(&new_len.to_le_bytes());
    out.resize(out.len().next_multiple_of(8), 0);
    out.extend_from_slice(&bytes[body_start..]);
    out
}

/// A process the bus asked the reactor to start for an activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// The bus name being activated.
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The complete environment of the child.
    pub env: Vec<(String, String)>,
}

impl PartialEq<&str> for Spawn {
    fn eq(&self, other: &&str) -> bool {
        self.name == *other
    }
}

impl Spawn {
    /// The value of `key` in the environment.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A container instance created by [`Harness::add_server`].
#[derive(Debug, Clone)]
pub struct Instance {
    /// Its object path.
    pub path: String,
    /// The address the AddServer reply gave.
    pub address: String,
}

/// Files in memory, as the bus's service-file table and `ReloadConfig` read them. Every
/// write gets a later modification time, so the table notices edits. Directory listings
/// (the scans of service directories) are counted.
#[derive(Default)]
pub struct MemFs {
    files: RefCell<BTreeMap<PathBuf, (Vec<u8>, u64)>>,
    clock: RefCell<u64>,
    /// Each directory listed, in order.
    listed: RefCell<Vec<PathBuf>>,
}

impl MemFs {
    /// Create or replace `path`.
    pub fn write(&self, path: &Path, bytes: &[u8]) {
        let mut t = self.clock.borrow_mut();
        *t += 1;
        self.files
            .borrow_mut()
            .insert(path.to_owned(), (bytes.to_vec(), *t));
    }

    /// Delete `path`; false if there was no such file.
    pub fn remove(&self, path: &Path) -> bool {
        self.files.borrow_mut().remove(path).is_some()
    }

    fn get(&self, path: &Path) -> std::io::Result<(Vec<u8>, u64)> {
        self.files
            .borrow()
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
}

impl ServiceFs for MemFs {
    fn list(&self, dir: &Path) -> std::io::Result<Vec<OsString>> {
        self.listed.borrow_mut().push(dir.to_owned());
        let names: Vec<OsString> = self
            .files
            .borrow()
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(ToOwned::to_owned))
            .collect();
        if names.is_empty() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        Ok(names)
    }

    fn stat(&self, path: &Path) -> std::io::Result<FileStamp> {
        let (bytes, t) = self.get(path)?;
        Ok(FileStamp {
            is_file: true,
            len: bytes.len() as u64,
            modified: Some(std::time::UNIX_EPOCH + Duration::from_secs(t)),
        })
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.get(path).map(|(b, _)| b)
    }
}

/// The world the bus under test sees: container sockets are entries in a table, files are
/// in a [`MemFs`].
pub struct HarnessWorld {
    files: Rc<MemFs>,
    /// The configuration file `ReloadConfig` reads (None: the built-in session config).
    config_path: Option<PathBuf>,
    /// Instances with a listening socket.
    listening: BTreeSet<u64>,
    /// What the next caller-provided socket (AddServer's `Socket`) turns out to be; None:
    /// a suitable socket bound to `/harness/provided/sock-<instance>`. Taken by each use.
    provided_outcome: Option<Result<SocketName, SocketProblem>>,
    /// The caller-provided sockets of listening instances (the bus's duplicates).
    provided: BTreeMap<u64, OwnedFd>,
}

impl World for HarnessWorld {
    fn peer_pidfd(&self, _id: ConnId) -> Option<OwnedFd> {
        None
    }

    fn listen_container(
        &mut self,
        instance: u64,
        provided: Option<OwnedFd>,
    ) -> Result<(SocketName, String), ListenError> {
        let name = match provided {
            None => SocketName::Path(PathBuf::from(format!(
                "/harness/containers/dbus-{instance}"
            ))),
            Some(fd) => {
                let name = match self.provided_outcome.take() {
                    None => SocketName::Path(PathBuf::from(format!(
                        "/harness/provided/sock-{instance}"
                    ))),
                    Some(Ok(name)) => name,
                    Some(Err(problem)) => {
                        return Err(ListenError {
                            path: PathBuf::new(),
                            step: ListenStep::Unsuitable(problem),
                            error: std::io::ErrorKind::InvalidInput.into(),
                        })
                    }
                };
                self.provided.insert(instance, fd);
                name
            }
        };
        self.listening.insert(instance);
        Ok((name, format!("{instance:032x}")))
    }

    fn load_config(&mut self) -> Result<Config, crate::config::ConfigError> {
        match &self.config_path {
            Some(p) => {
                let bytes = self.files.read(p).map_err(|e| crate::config::ConfigError {
                    file: p.clone(),
                    line: 0,
                    element: String::new(),
                    message: crate::config::ConfigProblem::open(p, &e),
                })?;
                crate::config::load_from_str(&String::from_utf8_lossy(&bytes), p)
            }
            None => Ok(crate::config::builtin_session()),
        }
    }
}

/// The bus under test, its clients and a virtual clock.
pub struct Harness {
    bus: Bus,
    world: HarnessWorld,
    now: Instant,
    clients: Vec<ClientState>,
    /// Names of services the bus asked to spawn, in order.
    spawned: Vec<Spawn>,
    /// `StopOnNotify` fds the reactor would watch: (instance, raw fd owned by the bus).
    notify: Vec<(u64, std::os::fd::RawFd)>,
    /// Service directory of [`Harness::with_services`] (in the [`MemFs`]).
    service_dir: Option<PathBuf>,
    /// Clients the bus said may be read again (`Effect::Resume`), oldest first.
    resumed: Vec<Client>,
    /// [`Harness::pump`] leaves reaping to [`Harness::reap_turn`].
    hold_reaping: bool,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A bus with [`DEFAULT_CONFIG`].
    pub fn new() -> Harness {
        Self::with_config_xml(DEFAULT_CONFIG)
    }

    /// [`DEFAULT_CONFIG`] with these `<limit>`s added.
    pub fn with_limits(limits: &[(&str, i64)]) -> Harness {
        let extra: String = limits
            .iter()
            .map(|(n, v)| format!("  <limit name=\"{n}\">{v}</limit>\n"))
            .collect();
        Self::with_config_xml(&DEFAULT_CONFIG.replace("</busconfig>", &(extra + "</busconfig>")))
    }

    /// A bus configured by a complete `<busconfig>` document.
    pub fn with_config_xml(xml: &str) -> Harness {
        let config = crate::config::load_from_str(xml, std::path::Path::new("/harness/bus.conf"))
            .unwrap_or_else(|e| panic!("harness config does not parse: {e}"));
        Self::with_config(config)
    }

    /// [`DEFAULT_CONFIG`] with `limits` and a fresh service directory holding one
    /// `<name>.service` file per `(name, exec)`. Nothing is ever executed: spawn requests are
    /// recorded ([`Harness::spawned`]) and the test reports the outcome
    /// ([`Harness::service_started`], [`Harness::service_exited`], ...).
    pub fn with_services(services: &[(&str, &str)], limits: &[(&str, i64)]) -> Harness {
        let files: Vec<(&str, String)> = services
            .iter()
            .map(|(name, exec)| (*name, format!("Name={name}\nExec={exec}\n")))
            .collect();
        let extra: String = limits
            .iter()
            .map(|(n, v)| format!("  <limit name=\"{n}\">{v}</limit>\n"))
            .collect();
        Self::with_service_files(&files, &extra)
    }

    /// Like [`Harness::with_services`], from whole service files: `(name, the lines after
    /// the [D-BUS Service] header)`, and with `extra` elements in the configuration.
    pub fn with_service_files(services: &[(&str, String)], extra: &str) -> Harness {
        let files = Rc::new(MemFs::default());
        let dir = PathBuf::from("/harness/services");
        for (name, body) in services {
            let text = format!("[D-BUS Service]\n{body}");
            files.write(&dir.join(format!("{name}.service")), text.as_bytes());
        }
        let extra = format!("  <servicedir>{}</servicedir>\n{extra}", dir.display());
        let xml = DEFAULT_CONFIG.replace("</busconfig>", &(extra + "</busconfig>"));
        // A file, so ReloadConfig re-reads it (see `write_config_file`).
        let conf = dir.join("bus.conf");
        files.write(&conf, xml.as_bytes());
        let config = crate::config::load_from_str(&xml, &conf)
            .unwrap_or_else(|e| panic!("harness config does not parse: {e}"));
        let mut h = Self::with_files(config, files, Some(conf));
        h.service_dir = Some(dir);
        h
    }

    fn with_config(config: Config) -> Harness {
        Self::with_files(config, Rc::new(MemFs::default()), None)
    }

    fn with_files(config: Config, files: Rc<MemFs>, config_path: Option<PathBuf>) -> Harness {
        capture_warnings();
        let now = Instant::now();
        // Only DAEMON_UID and 0 are privileged.
        let host = HostFacts {
            daemon_uid: DAEMON_UID,
            service_fs: files.clone(),
            processes: Rc::new(HarnessProcesses),
            ..HostFacts::fixed(now)
        };
        let bus = Bus::new(config, BusOptions::default(), host);
        Harness {
            bus,
            world: HarnessWorld {
                files,
                config_path,
                listening: BTreeSet::new(),
                provided_outcome: None,
                provided: BTreeMap::new(),
            },
            now,
            clients: Vec::new(),
            spawned: Vec::new(),
            notify: Vec::new(),
            service_dir: None,
            resumed: Vec::new(),
            hold_reaping: false,
        }
    }

    // ---- connections -------------------------------------------------------------------

    /// Accept and authenticate a connection as [`USER_UID`] (no Hello yet).
    pub fn connect(&mut self) -> Client {
        self.connect_as(USER_UID)
    }

    /// Accept and authenticate a connection with `uid`. If the bus refuses the identity,
    /// the client is returned closed.
    pub fn connect_as(&mut self, uid: u32) -> Client {
        self.connect_with(uid, true)
    }

    /// Accept and authenticate with `uid`; `unix_fd`: whether fd passing was negotiated.
    pub fn connect_with(&mut self, uid: u32, unix_fd: bool) -> Client {
        let id = self.bus.accept(creds(uid));
        self.authenticate(id, uid, unix_fd)
    }

    fn authenticate(&mut self, id: ConnId, uid: u32, unix_fd: bool) -> Client {
        let c = Client(self.clients.len());
        self.clients.push(ClientState {
            conn: id,
            closed: None,
            serial: 0,
            unique: None,
            inbox: VecDeque::new(),
        });
        if !self.bus.authenticated(id, Some(uid), unix_fd) {
            self.close_now(c, "refused by policy");
        }
        self.pump();
        c
    }

    /// Send Hello on `c` and consume its reply and the NameAcquired that follows (asserting
    /// both, in that order). Returns the unique name.
    #[track_caller]
    pub fn hello(&mut self, c: Client) -> String {
        let serial = self.send(
            c,
            method_call(Some(DBUS), DBUS_PATH, Some(DBUS_IFACE), "Hello"),
            &empty(),
        );
        let r = self.recv(c).expect("Hello reply").expect_return();
        assert_eq!(r.reply_serial, Some(serial));
        let name = r.arg_str(0);
        assert_eq!(r.destination.as_deref(), Some(name.as_str()));
        let acq = self.recv(c).expect("NameAcquired after Hello");
        assert!(acq.is_driver_signal("NameAcquired"), "{acq:#?}");
        assert_eq!(acq.arg_str(0), name);
        self.clients[c.0].unique = Some(name.clone());
        name
    }

    /// A connected, registered client ([`Harness::connect`] + [`Harness::hello`]).
    pub fn client(&mut self) -> Client {
        let c = self.connect();
        self.hello(c);
        c
    }

    /// A connected, registered client with `uid`.
    pub fn client_as(&mut self, uid: u32) -> Client {
        let c = self.connect_as(uid);
        self.hello(c);
        c
    }

    /// The unique name `c` got from [`Harness::hello`].
    #[track_caller]
    pub fn unique(&self, c: Client) -> String {
        self.clients[c.0]
            .unique
            .clone()
            .expect("client has no unique name (no Hello through the harness)")
    }

    /// The bus's connection id of `c` (slots of departed connections are reused).
    pub fn conn(&self, c: Client) -> ConnId {
        self.clients[c.0].conn
    }

    /// The client closes its end: the bus sees the disconnect. Whatever was queued for it
    /// and not yet received is lost.
    pub fn disconnect(&mut self, c: Client) {
        let st = &mut self.clients[c.0];
        if st.closed.is_some() {
            return;
        }
        st.closed = Some("closed by client");
        st.inbox.clear();
        let id = st.conn;
        self.bus.disconnect(id);
        self.pump();
    }

    /// The warnings and errors the bus logged on this test's thread since the last call,
    /// as `WARN message` / `ERROR message`, oldest first.
    pub fn take_warnings(&mut self) -> Vec<String> {
        WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut()))
    }

    /// Whether `c` is closed (by the bus or by [`Harness::disconnect`]).
    pub fn is_closed(&self, c: Client) -> bool {
        self.clients[c.0].closed.is_some()
    }

    /// Why `c` was closed.
    pub fn close_reason(&self, c: Client) -> Option<&'static str> {
        self.clients[c.0].closed
    }

    /// The process id the bus was told for `c` (its socket credentials).
    pub fn pid(&self, c: Client) -> u32 {
        self.bus
            .peers
            .get(self.clients[c.0].conn)
            .and_then(|p| p.creds.pid)
            .expect("harness connections have a pid")
    }

    // ---- back-pressure (quota.rs) ---------------------------------------------------------

    /// Whether the reactor may read from `c` now ([`Bus::may_read`]); a refusal pauses it
    /// until the bus resumes it ([`Harness::take_resumed`]).
    pub fn may_read(&mut self, c: Client) -> bool {
        let id = self.live(c).expect("may_read on a closed client");
        self.bus.may_read(id)
    }

    /// Entries in the bus's reply-deadline heap, live or stale.
    pub fn reply_deadline_entries(&self) -> usize {
        self.bus.replies.deadline_entries()
    }

    /// The clients the bus resumed since the last call (`Effect::Resume`), oldest first.
    pub fn take_resumed(&mut self) -> Vec<Client> {
        std::mem::take(&mut self.resumed)
    }

    /// The reactor holds `bytes` of a message `c` is still sending, and `fds` received ahead
    /// of it ([`Bus::receiving`]).
    pub fn receiving(&mut self, c: Client, bytes: usize, fds: usize) {
        let id = self.live(c).expect("receiving on a closed client");
        self.bus.receiving(id, bytes, fds);
        self.pump();
    }

    /// What the bus holds of what `c` sent (queued at receivers plus its partial message).
    pub fn held(&self, c: Client) -> crate::bus::quota::Held {
        let acct = self.account(c);
        self.bus.quotas.held(acct)
    }

    /// What the bus holds of what all connections of `uid` sent.
    pub fn user_held(&self, uid: u32) -> crate::bus::quota::Held {
        self.bus.quotas.user_held(Some(uid))
    }

    /// Quota accounts the bus keeps (live connections plus gone ones with messages still
    /// queued).
    pub fn quota_accounts(&self) -> usize {
        self.bus.quotas.accounts()
    }

    fn account(&self, c: Client) -> u32 {
        let id = self.clients[c.0].conn;
        self.bus
            .peers
            .get(id)
            .map_or(crate::bus::quota::NOBODY, |p| p.account)
    }

    // ---- releasing gone connections' queues (Bus::reap) --------------------------------------

    /// From now on, what gone connections left queued is released only by
    /// [`Harness::reap_turn`], one reactor turn at a time.
    pub fn hold_reaping(&mut self) {
        self.hold_reaping = true;
    }

    /// One reactor turn's reaping ([`Bus::reap`] with `budget`), its effects carried out
    /// and the invariants checked. Returns how many messages it released.
    pub fn reap_turn(&mut self, budget: usize) -> usize {
        let before = self.bus.delivery.queued();
        self.bus.reap(budget);
        self.apply_effects();
        self.check();
        before - self.bus.delivery.queued()
    }

    /// Whether gone connections' messages are still to be released.
    pub fn reaping(&self) -> bool {
        self.bus.reaping()
    }

    /// The bus's id (slab slot) of `c`, open or closed: a new connection may reuse a
    /// closed one's.
    pub fn slot(&self, c: Client) -> ConnId {
        self.clients[c.0].conn
    }

    /// Messages queued bus-wide, for live connections and gone ones not yet reaped.
    pub fn queued_total(&self) -> usize {
        self.bus.delivery.queued()
    }

    /// Whether `c` is a monitor now (BecomeMonitor succeeded).
    pub fn is_monitor(&self, c: Client) -> bool {
        self.live(c)
            .and_then(|id| self.bus.peers.get(id))
            .is_some_and(|p| p.phase == Phase::Monitor)
    }

    // ---- sending ---------------------------------------------------------------------

    /// Send the message `b` with `body` from `c`, with the client's next serial. The
    /// builder is sent as given (note that [`MessageBuilder`]'s own constructors set
    /// NO_REPLY_EXPECTED; [`method_call`] and [`signal`] do not). Returns the serial.
    #[track_caller]
    pub fn send(&mut self, c: Client, b: MessageBuilder, body: &BodyWriter) -> u32 {
        let st = &mut self.clients[c.0];
        st.serial = st.serial.wrapping_add(1).max(1);
        let serial = st.serial;
        self.send_with_serial(c, serial, b, body);
        serial
    }

    /// Send with an explicit serial (for duplicate-serial cases).
    #[track_caller]
    pub fn send_with_serial(
        &mut self,
        c: Client,
        serial: u32,
        b: MessageBuilder,
        body: &BodyWriter,
    ) {
        let bytes = b.build(serial, body);
        self.send_raw(c, bytes);
    }

    /// Send a method call from `c`; returns its serial.
    #[track_caller]
    pub fn call(
        &mut self,
        c: Client,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: &BodyWriter,
    ) -> u32 {
        self.send(c, method_call(Some(dest), path, Some(iface), member), body)
    }

    /// Call `member` on the driver (org.freedesktop.DBus interface, canonical path) and
    /// return its reply, leaving any other message queued for `c` in place.
    #[track_caller]
    pub fn driver(&mut self, c: Client, member: &str, body: &BodyWriter) -> Msg {
        self.driver_iface(c, DBUS_IFACE, member, body)
    }

    /// Call `iface.member` on the driver at its canonical path and return the reply.
    #[track_caller]
    pub fn driver_iface(&mut self, c: Client, iface: &str, member: &str, body: &BodyWriter) -> Msg {
        let serial = self.call(c, DBUS, DBUS_PATH, iface, member, body);
        self.reply(c, serial)
    }

    /// Hand raw message bytes from `c` to the bus, as the reactor does once a whole message
    /// arrived: an invalid message closes the connection.
    #[track_caller]
    pub fn send_raw(&mut self, c: Client, bytes: Vec<u8>) {
        self.send_raw_fds(c, bytes, Vec::new());
    }

    /// [`Harness::send_raw`] with unix fds attached.
    #[track_caller]
    pub fn send_raw_fds(&mut self, c: Client, bytes: Vec<u8>, fds: Vec<std::os::fd::OwnedFd>) {
        let id = self
            .live(c)
            .unwrap_or_else(|| panic!("send on closed client {c:?}"));
        // As the reactor does, the message is a slice of a larger receive buffer (here with
        // bytes on both sides that are not part of it).
        let len = bytes.len();
        let mut buf = vec![0xa5; RX_MARGIN];
        buf.extend_from_slice(&bytes);
        buf.extend_from_slice(&[0x5a; RX_MARGIN]);
        match Message::parse_in(Rc::from(buf), RX_MARGIN..RX_MARGIN + len, fds.len()) {
            Ok(msg) => {
                let fds = if fds.is_empty() {
                    None
                } else {
                    Some(Rc::from(fds))
                };
                self.bus.set_clock(Clock::fixed(self.now));
                self.bus.dispatch(id, &msg, fds, &mut self.world);
            }
            Err(_) => self.bus.close(id, CloseReason::InvalidMessage),
        }
        self.pump();
    }

    /// For each message queued for `c` in the bus, whether it is a slice of a receive
    /// buffer holding more than it (rather than in a buffer of its own).
    pub fn queued_pinning(&self, c: Client) -> Vec<bool> {
        self.live(c)
            .and_then(|id| self.bus.pending(id))
            .map_or_else(Vec::new, |q| q.map(Outgoing::pins_buffer).collect())
    }

    /// The buffers the messages queued for `c` in the bus hold (to see which are shared).
    pub fn queued_buffers(&self, c: Client) -> Vec<Rc<[u8]>> {
        self.live(c)
            .and_then(|id| self.bus.pending(id))
            .map_or_else(Vec::new, |q| q.map(|o| o.data.clone()).collect())
    }

    /// Send `b` with `body` and these fds (UNIX_FDS is set to their number).
    #[track_caller]
    pub fn send_fds(
        &mut self,
        c: Client,
        b: MessageBuilder,
        body: &BodyWriter,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> u32 {
        let st = &mut self.clients[c.0];
        st.serial = st.serial.wrapping_add(1).max(1);
        let serial = st.serial;
        let bytes = b.unix_fds(fds.len() as u32).build(serial, body);
        self.send_raw_fds(c, bytes, fds);
        serial
    }

    // ---- receiving -------------------------------------------------------------------

    /// The next message the bus queued for `c`, decoded (None if nothing is queued).
    pub fn recv(&mut self, c: Client) -> Option<Msg> {
        if let Some(m) = self.clients[c.0].inbox.pop_front() {
            return Some(m);
        }
        let id = self.live(c)?;
        self.pop_queued(id)
    }

    /// Everything queued for `c`, in order.
    pub fn recv_all(&mut self, c: Client) -> Vec<Msg> {
        std::iter::from_fn(|| self.recv(c)).collect()
    }

    /// Number of messages waiting for `c` (not yet received).
    pub fn pending(&self, c: Client) -> usize {
        let st = &self.clients[c.0];
        let queued = self
            .live(c)
            .and_then(|id| self.bus.pending(id))
            .map_or(0, Iterator::count);
        st.inbox.len() + queued
    }

    /// The reply (return or error) to `c`'s call `serial`, taken out of the queue; other
    /// messages stay queued in order. Panics if there is none.
    #[track_caller]
    pub fn reply(&mut self, c: Client, serial: u32) -> Msg {
        self.try_reply(c, serial)
            .unwrap_or_else(|| panic!("no reply to serial {serial} for {c:?}"))
    }

    /// Like [`Harness::reply`], but None when there is no reply.
    pub fn try_reply(&mut self, c: Client, serial: u32) -> Option<Msg> {
        self.take_all(c);
        let inbox = &mut self.clients[c.0].inbox;
        let pos = inbox.iter().position(|m| {
            m.reply_serial == Some(serial)
                && matches!(m.msg_type, mtype::METHOD_RETURN | mtype::ERROR)
        })?;
        inbox.remove(pos)
    }

    /// Move everything queued for `c` in the bus into the client's inbox.
    fn take_all(&mut self, c: Client) {
        if let Some(id) = self.live(c) {
            while let Some(m) = self.pop_queued(id) {
                self.clients[c.0].inbox.push_back(m);
            }
        }
    }

    /// Pop and decode the oldest message queued for `id`, doing the reactor's accounting.
    fn pop_queued(&mut self, id: ConnId) -> Option<Msg> {
        let out = self.bus.pending(id)?.next()?;
        let (msg, len) = (decode(out), out.len());
        self.bus.written(id, len);
        // Writes may resume paused senders (Effect::Resume).
        self.pump();
        Some(msg)
    }

    // ---- time ----------------------------------------------------------------------

    /// Advance the virtual clock by `d` and run the bus's timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.bus.set_clock(Clock::fixed(self.now));
        self.bus.on_timer(self.now);
        self.pump();
    }

    // ---- Containers1 ------------------------------------------------------------------

    /// `AddServer` (2021 signature `ssa{sv}a{sv}`) from `c` with empty metadata and named
    /// arguments; asserts success.
    #[track_caller]
    pub fn add_server(&mut self, c: Client, container_type: &str, name: &str) -> Instance {
        let r = self.add_server_with(c, container_type, name, &[]);
        let r = r.expect_return();
        let path = r.arg_str(0);
        let address = r.arg_str(2);
        Instance { path, address }
    }

    /// `AddServer` (2021 signature) with boolean named arguments (e.g. StopOnDisconnect);
    /// returns the reply, whatever it is.
    #[track_caller]
    pub fn add_server_with(
        &mut self,
        c: Client,
        container_type: &str,
        name: &str,
        named: &[(&str, bool)],
    ) -> Msg {
        let mut b = BodyWriter::new();
        b.str(container_type).str(name);
        b.array("{sv}", |_| {});
        b.array("{sv}", |a| {
            for (k, v) in named {
                a.dict_entry(|e| {
                    e.str(k).variant("b", |x| {
                        x.bool(*v);
                    });
                });
            }
        });
        self.driver_iface(c, C1, "AddServer", &b)
    }

    /// `AddServer` (2021 signature) with the `Allow` named argument: rules of
    /// `(flags, bus name, object path, interface-and-maybe-member)`. Returns the reply.
    #[track_caller]
    pub fn add_server_allow(&mut self, c: Client, rules: &[(u32, &str, &str, &str)]) -> Msg {
        let mut b = BodyWriter::new();
        b.str("org.example.Sandbox").str("filtered-app");
        b.array("{sv}", |_| {});
        b.array("{sv}", |a| {
            a.dict_entry(|e| {
                e.str("Allow").variant("a(usos)", |v| {
                    v.array("(usos)", |arr| {
                        for (flags, name, path, iface) in rules {
                            arr.structure("usos", |st| {
                                st.u32(*flags).str(name).object_path(path).str(iface);
                            });
                        }
                    });
                });
            });
        });
        self.driver_iface(c, C1, "AddServer", &b)
    }

    /// `AddServer` with the 2024 signature `sssa{sv}a{sv}`; asserts success.
    #[track_caller]
    pub fn add_server_2024(
        &mut self,
        c: Client,
        container_type: &str,
        app_id: &str,
        instance_id: &str,
    ) -> Instance {
        let mut b = BodyWriter::new();
        b.str(container_type).str(app_id).str(instance_id);
        b.array("{sv}", |_| {});
        b.array("{sv}", |_| {});
        let r = self.driver_iface(c, C1, "AddServer", &b).expect_return();
        let path = r.arg_str(0);
        let address = match r
            .arg_dict(1)
            .into_iter()
            .find(|(k, _)| k == "Address")
            .map(|(_, v)| v)
        {
            Some(Value::Str(a)) => a,
            other => panic!("no Address in 2024 AddServer reply: {other:?}"),
        };
        Instance { path, address }
    }

    /// A connection arrives on the socket of the instance at `path` and authenticates as
    /// `uid`. None when the bus drops it before authentication (instance not listening or
    /// full); a closed client when authentication is refused (wrong uid).
    pub fn accept_on_instance(&mut self, path: &str, uid: u32) -> Option<Client> {
        let n = crate::bus::containers::Containers::parse_path(path)?;
        let id = self.bus.accept_contained(creds(uid), n)?;
        Some(self.authenticate(id, uid, true))
    }

    /// Make the next caller-provided socket (AddServer's `Socket`) have this name, or be
    /// refused for this problem, as the reactor's checks would decide.
    pub fn provided_socket_outcome(&mut self, outcome: Result<SocketName, SocketProblem>) {
        self.world.provided_outcome = Some(outcome);
    }

    /// The bus's duplicate of the socket provided for the instance at `path`, while it
    /// listens on it.
    pub fn provided_socket(&self, path: &str) -> Option<&OwnedFd> {
        let n = crate::bus::containers::Containers::parse_path(path)?;
        self.world.provided.get(&n)
    }

    /// The reactor gives up on the caller-provided socket of the instance at `path` (its
    /// creator made it blocking).
    pub fn container_socket_failed(&mut self, path: &str) {
        if let Some(n) = crate::bus::containers::Containers::parse_path(path) {
            self.bus.container_socket_failed(n);
        }
        self.pump();
    }

    /// Whether the instance at `path` still has its listening socket.
    pub fn instance_listening(&self, path: &str) -> bool {
        crate::bus::containers::Containers::parse_path(path)
            .is_some_and(|n| self.world.listening.contains(&n))
    }

    /// Check the `StopOnNotify` fds as the reactor's poll would (without waiting): an
    /// instance whose fd hung up is stopped.
    pub fn poll_notify_fds(&mut self) {
        let watched = std::mem::take(&mut self.notify);
        let mut hung_up = Vec::new();
        for (n, raw) in watched {
            // The bus owns the fd until its UnwatchNotify effect, which removes it from
            // `self.notify` first.
            if crate::sys::hung_up(raw) {
                hung_up.push(n);
            } else {
                self.notify.push((n, raw));
            }
        }
        for n in hung_up {
            self.bus.container_notify_hangup(n);
            self.pump();
        }
    }

    /// The processes the bus asked the reactor to spawn, in order.
    pub fn spawned(&self) -> &[Spawn] {
        &self.spawned
    }

    /// Add (or replace) `<name>.service` in the directory of [`Harness::with_services`].
    #[track_caller]
    pub fn add_service_file(&mut self, name: &str, exec: &str) {
        let dir = self
            .service_dir
            .as_ref()
            .expect("harness made by with_services");
        let text = format!("[D-BUS Service]\nName={name}\nExec={exec}\n");
        self.world
            .files
            .write(&dir.join(format!("{name}.service")), text.as_bytes());
    }

    /// Replace the configuration file ReloadConfig reads (None: delete it). Only for a
    /// harness made by [`Harness::with_services`]; the others have no file, and ReloadConfig
    /// there loads the built-in session configuration.
    #[track_caller]
    pub fn write_config_file(&mut self, xml: Option<&str>) {
        let dir = self
            .service_dir
            .as_ref()
            .expect("harness made by with_services");
        let conf = dir.join("bus.conf");
        match xml {
            Some(x) => self.world.files.write(&conf, x.as_bytes()),
            None => assert!(self.world.files.remove(&conf), "no bus.conf to remove"),
        }
    }

    /// The directories the bus listed (scanned for service files) since the last call, in
    /// order.
    pub fn take_listed_dirs(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.world.files.listed.borrow_mut())
    }

    /// Write `text` to `path` in the harness's files (a service file in another directory).
    pub fn write_file(&mut self, path: &Path, text: &str) {
        self.world.files.write(path, text.as_bytes());
    }

    /// The reactor's directory watch now covers exactly `dirs` (as `Reactor::aim_dir_watch`
    /// reports it); a file changed in one of them is then only seen after a reload.
    pub fn watch_dirs(&mut self, dirs: &[&Path]) {
        self.bus.set_watched_dirs(dirs.iter().copied());
    }

    /// The directory of [`Harness::with_services`].
    #[track_caller]
    pub fn service_dir(&self) -> PathBuf {
        self.service_dir
            .clone()
            .expect("harness made by with_services")
    }

    /// The `<servicedir>` line of [`Harness::with_services`], for configs written by
    /// [`Harness::write_config_file`].
    #[track_caller]
    pub fn servicedir_element(&self) -> String {
        let dir = self
            .service_dir
            .as_ref()
            .expect("harness made by with_services");
        format!("<servicedir>{}</servicedir>", dir.display())
    }

    /// The process for the activation of `name` started with `pid`.
    pub fn service_started(&mut self, name: &str, pid: u32) {
        self.bus.spawned(name, pid);
        self.pump();
    }

    /// The process for the activation of `name` could not be started.
    pub fn service_spawn_failed(&mut self, name: &str, why: &str) {
        self.bus.spawn_failed(name, why);
        self.pump();
    }

    /// Process `pid` exited with `code` (None: killed by `signal`).
    pub fn service_exited(&mut self, pid: u32, code: Option<i32>, signal: Option<i32>) {
        self.bus.child_exited(pid, code, signal);
        self.pump();
    }

    // ---- internals -----------------------------------------------------------------------

    /// The bus id of `c` while it is open.
    fn live(&self, c: Client) -> Option<ConnId> {
        let st = &self.clients[c.0];
        st.closed.is_none().then_some(st.conn)
    }

    /// Close `c` on the bus's request: what was queued is kept for `recv` (the reactor
    /// flushes before it closes), then the bus forgets the connection.
    fn close_now(&mut self, c: Client, why: &'static str) {
        let Some(id) = self.live(c) else {
            return;
        };
        self.take_all(c);
        self.clients[c.0].closed = Some(why);
        self.bus.disconnect(id);
    }

    /// Carry out the bus's effects as the reactor does after each event: closes, the
    /// container socket table, notify-fd watches, spawns. Flushes need nothing: a client's
    /// queue is read when the test asks. Then, unless [`Harness::hold_reaping`], release
    /// what gone connections left queued, a piece per turn, as the reactor does.
    pub fn pump(&mut self) {
        self.apply_effects();
        self.check();
        while !self.hold_reaping && self.bus.reaping() {
            self.reap_turn(REAP_BUDGET);
        }
    }

    fn check(&self) {
        if let Err(e) = self.bus.check_invariants() {
            panic!("bus invariant broken: {e}");
        }
    }

    fn apply_effects(&mut self) {
        while let Some(effect) = self.bus.poll_effect() {
            match effect {
                Effect::Flush(_) | Effect::Reconfigured => {}
                Effect::Resume(id) => {
                    if let Some(c) = (0..self.clients.len())
                        .map(Client)
                        .find(|&c| self.live(c) == Some(id))
                    {
                        self.resumed.push(c);
                    }
                }
                Effect::Close(id, why) => {
                    let open = (0..self.clients.len())
                        .map(Client)
                        .find(|&c| self.live(c) == Some(id));
                    if let Some(c) = open {
                        self.close_now(c, why.text());
                    }
                }
                Effect::Unlisten(n) => {
                    self.world.listening.remove(&n);
                    self.world.provided.remove(&n);
                }
                Effect::WatchNotify(n, raw) => self.notify.push((n, raw)),
                Effect::UnwatchNotify(n, fd) => {
                    // The fd is closed here, after it left the watch list.
                    self.notify.retain(|&(c, _)| c != n);
                    drop(fd);
                }
                Effect::Spawn(r) => {
                    let r = *r;
                    self.spawned.push(Spawn {
                        name: r.name,
                        argv: r.argv,
                        env: r.env,
                    })
                }
            }
        }
    }
}

/// Socket credentials of a harness client.
/// Every process's command line is `client --pid PID`.
struct HarnessProcesses;

impl ProcessInfo for HarnessProcesses {
    fn command_line(&self, pid: u32) -> Option<String> {
        Some(format!("client --pid {pid}"))
    }
}

fn creds(uid: u32) -> Credentials {
    Credentials {
        uid: Some(uid),
        pid: Some(10_000 + uid),
        gids: Some(vec![uid]),
        security_label: None,
    }
}

/// The bytes a queued message puts on the wire (what `Reactor::flush` writes).
fn wire_bytes(out: &Outgoing) -> Vec<u8> {
    let v = out.parts().concat();
    assert_eq!(v.len(), out.len(), "Outgoing::len disagrees with its bytes");
    v
}

/// Bytes around each message [`Harness::send_raw`] hands over, in its receive buffer (at
/// least one byte: see `Outgoing::pins_buffer`; few, as each queue is charged the whole
/// buffer of its head, and the limits tests count bytes).
const RX_MARGIN: usize = 4;

/// Decode a queued message; it must be a valid D-Bus message.
fn decode(out: &Outgoing) -> Msg {
    let bytes = wire_bytes(out);
    let len = bytes.len();
    let n_fds = out.n_fds();
    let fields = header_fields(&bytes);
    let msg = Message::parse(Rc::from(bytes), n_fds)
        .unwrap_or_else(|e| panic!("bus queued an invalid message: {e}"));
    let text = |code: u8| {
        fields
            .iter()
            .find(|(c, _)| *c == code)
            .and_then(|(_, v)| v.clone())
    };
    Msg {
        msg_type: msg.msg_type,
        flags: msg.flags,
        serial: msg.serial,
        reply_serial: msg.reply_serial,
        sender: text(7),
        destination: msg.destination().map(str::to_owned),
        path: msg.path().map(str::to_owned),
        interface: msg.interface().map(str::to_owned),
        member: msg.member().map(str::to_owned),
        error_name: msg.error_name().map(str::to_owned),
        signature: msg.signature().to_owned(),
        container_instance: text(10),
        n_fds,
        len,
        field_codes: fields.iter().map(|(c, _)| *c).collect(),
        msg,
    }
}

/// The header fields of a message: (code, text value for string-like fields). Handles the
/// field types the bus emits (s, o, g, u).
fn header_fields(b: &[u8]) -> Vec<(u8, Option<String>)> {
    let big = b[0] == b'B';
    let u32_at = |p: usize| {
        let w = [b[p], b[p + 1], b[p + 2], b[p + 3]];
        if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let end = 16 + u32_at(12) as usize;
    let mut p = 16;
    let mut out = Vec::new();
    while p < end {
        p = p.next_multiple_of(8);
        let code = b[p];
        let sig_len = b[p + 1] as usize;
        let sig = &b[p + 2..p + 2 + sig_len];
        p += 3 + sig_len;
        match sig {
            b"s" | b"o" => {
                p = p.next_multiple_of(4);
                let len = u32_at(p) as usize;
                let s = String::from_utf8(b[p + 4..p + 4 + len].to_vec()).expect("utf-8 field");
                out.push((code, Some(s)));
                p += 4 + len + 1;
            }
            b"g" => {
                let len = b[p] as usize;
                let s = String::from_utf8(b[p + 1..p + 1 + len].to_vec()).expect("utf-8 field");
                out.push((code, Some(s)));
                p += 1 + len + 1;
            }
            b"u" => {
                p = p.next_multiple_of(4);
                out.push((code, None));
                p += 4;
            }
            other => panic!("header field {code} of unexpected type {other:?}"),
        }
    }
    out
}
