//! Pending service starts (activation): messages and StartServiceByName callers waiting for
//! an activatable name, the spawn requests handed to the reactor, systemd's activation
//! protocol, and the outcomes (name acquired, child exited, timeout, ActivationFailure).

use super::activation::{parse_exec, ExecParseError, ServiceFile};
use super::connection::Fds;
use super::error::{BusError, ErrorKind};
use super::{Bus, ConnId, DRIVER_NAME, DRIVER_PATH};
use crate::wire::marshal::{BodyReader, BodyWriter, MessageBuilder};
use crate::wire::message::{self, flags, Message};
use std::time::{Duration, Instant};

/// systemd's bus name.
pub const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
const ACTIVATOR_IFACE: &str = "org.freedesktop.systemd1.Activator";

/// A process the reactor must start for an activation.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// The bus name being activated.
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Complete environment of the child.
    pub env: Vec<(String, String)>,
}

/// Something the bus asks of systemd.
#[derive(Debug, Clone)]
enum SystemdRequest {
    /// `Activator.ActivationRequest(unit)`.
    Activate(String),
    /// `Manager.SetEnvironment(as)`.
    SetEnvironment(Vec<String>),
}

/// A message held until its destination is activated.
#[derive(Debug)]
struct Waiting {
    from: ConnId,
    from_no: u64,
    msg: Message,
    fds: Option<Fds>,
}

/// One name being started.
#[derive(Debug)]
pub struct PendingStart {
    waiting: Vec<Waiting>,
    /// StartServiceByName calls to answer: (caller, caller's unique number, call serial).
    callers: Vec<(ConnId, u64, u32)>,
    deadline: Instant,
    /// The spawned process, for traditional activation.
    pub pid: Option<u32>,
    /// The systemd unit, for systemd activation.
    unit: Option<String>,
}

/// Activation state of the bus.
#[derive(Debug, Default)]
pub struct Starts {
    pending: ahash::AHashMap<String, PendingStart>,
    /// Requests for systemd made before it joined the bus, in order.
    systemd_backlog: Vec<SystemdRequest>,
    /// Names that just got a primary owner, handled by `Bus::run_deferred`.
    pub acquired: Vec<std::rc::Rc<str>>,
}

impl Starts {
    /// Whether `name` is being started.
    pub fn contains(&self, name: &str) -> bool {
        self.pending.contains_key(name)
    }

    /// Earliest start deadline.
    // Asked twice per reactor turn: with no start pending (nearly always) it answers
    // without walking the empty table's control bytes.
    #[inline]
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending.values().map(|p| p.deadline).min()
    }
}

impl Bus {
    /// The service file for `name`, if any (rescanning on a miss, as dbus-daemon does).
    fn service_for(&mut self, name: &str) -> Option<ServiceFile> {
        self.services.lookup(name).cloned()
    }

    /// A message to the unowned `dest` that may auto-start it: returns Ok(true) if it was
    /// queued behind a start, Ok(false) if `dest` is not activatable. `activatable` is the
    /// answer of the lookup the dispatcher already made for this message (None: none made),
    /// so that one message costs at most one lookup, and with it at most one rescan.
    pub(super) fn queue_for_start(
        &mut self,
        id: ConnId,
        msg: &Message,
        dest: &str,
        activatable: Option<bool>,
        fds: Option<Fds>,
    ) -> Result<bool, BusError> {
        if dest.starts_with(':') {
            return Ok(false);
        }
        if !self.starts.pending.contains_key(dest) {
            let service = match activatable {
                Some(false) => None,
                // Just looked up: the table has it, no need to touch the disk again.
                Some(true) => self.services.get(dest).cloned(),
                None => self.service_for(dest),
            };
            let Some(service) = service else {
                return Ok(false);
            };
            // Policy is checked against the name before starting anything.
            self.check_send_to_name(id, msg, dest)?;
            self.begin_start(&service, Some(id))?;
        } else {
            self.check_send_to_name(id, msg, dest)?;
        }
        let from_no = self.peers.get(id).map_or(0, |p| p.serial_no);
        log::debug!("queued {:?} for the start of {dest}", msg.member());
        if let Some(p) = self.starts.pending.get_mut(dest) {
            p.waiting.push(Waiting {
                from: id,
                from_no,
                // Held until the start ends: not as a slice pinning a whole receive buffer.
                msg: msg.detached(),
                fds,
            });
        }
        Ok(true)
    }

    /// StartServiceByName.
    pub(super) fn start_service_by_name(
        &mut self,
        id: ConnId,
        name: &str,
        serial: u32,
    ) -> Result<Option<u32>, BusError> {
        let Some(service) = self.service_for(name) else {
            return Err(BusError::new(
                ErrorKind::ServiceUnknown,
                format!("The name {name} was not provided by any .service files"),
            ));
        };
        if self.names.owner(name).is_some() {
            return Ok(Some(2));
        }
        if !self.starts.pending.contains_key(name) {
            self.begin_start(&service, Some(id))?;
        }
        let caller_no = self.peers.get(id).map_or(0, |p| p.serial_no);
        if let Some(p) = self.starts.pending.get_mut(name) {
            p.callers.push((id, caller_no, serial));
        }
        Ok(None)
    }

    /// Start `service`: ActivationRequest to systemd, or a spawn request for the reactor.
    /// `by` asked for it (None: the bus itself, starting systemd for another start).
    fn begin_start(&mut self, service: &ServiceFile, by: Option<ConnId>) -> Result<(), BusError> {
        let max = self.config.limits.max_pending_service_starts as usize;
        if self.starts.pending.len() >= max {
            return Err(BusError::new(
                ErrorKind::LimitsExceeded,
                "The maximum number of pending activations has been reached",
            ));
        }
        self.log_activation(service, by);
        let deadline = self.clock.now()
            + Duration::from_millis(u64::from(self.config.limits.service_start_timeout));
        let name = service.name.clone();
        let mut pending = PendingStart {
            waiting: Vec::new(),
            callers: Vec::new(),
            deadline,
            pid: None,
            unit: None,
        };
        if let (true, Some(unit)) = (
            self.options.systemd_activation && name != SYSTEMD_NAME,
            service.systemd_service.clone(),
        ) {
            pending.unit = Some(unit.clone());
            self.starts.pending.insert(name, pending);
            self.request_systemd_activation(&unit);
            return Ok(());
        }
        if name == SYSTEMD_NAME && self.options.systemd_activation {
            // systemd itself is never spawned by the bus: wait for it to connect.
            self.starts.pending.insert(name, pending);
            return Ok(());
        }
        let argv = match &self.config.servicehelper {
            // A system bus runs its setuid launch helper with the name, as dbus-daemon does:
            // the helper finds and checks the service file itself, switches to its `User`
            // and executes it (its exit codes are mapped in `child_exited`).
            Some(helper) => {
                if service.check_system_bus().is_err() {
                    return Err(BusError::new(
                        ErrorKind::SpawnFileInvalid,
                        "Cannot do system-bus activation with no user\n",
                    ));
                }
                vec![helper.to_string_lossy().into_owned(), name.clone()]
            }
            None => self.exec_argv(service)?,
        };
        let env = self
            .activation_env
            .for_service(&self.options.address, self.config.bus_type.as_deref());
        self.effects
            .push(super::Effect::Spawn(Box::new(SpawnRequest {
                name: name.clone(),
                argv,
                env,
            })));
        self.starts.pending.insert(name, pending);
        Ok(())
    }

    /// The program and arguments of `service`'s Exec line. As dbus-daemon answers: a line
    /// without words cannot be executed (Spawn.ExecFailed); one that does not parse is
    /// InvalidArgs (its shell parser's).
    fn exec_argv(&self, service: &ServiceFile) -> Result<Vec<String>, BusError> {
        let name = &service.name;
        match parse_exec(&service.exec) {
            Ok(argv) if !argv.is_empty() => Ok(argv),
            Ok(_) | Err(ExecParseError::Empty) => Err(BusError::new(
                ErrorKind::SpawnExecFailed,
                format!("Failed to execute program for {name}: the Exec line is empty"),
            )),
            Err(e) => Err(BusError::new(
                ErrorKind::InvalidArgs,
                format!("Invalid Exec line for {name}: {e}"),
            )),
        }
    }

    /// dbus-daemon's line for a start: `Activating service name='…' requested by ':1.1'
    /// (uid=… pid=… comm="…")`, or `Activating via systemd: service name='…' unit='…'
    /// requested by …` when systemd does the starting.
    fn log_activation(&self, service: &ServiceFile, by: Option<ConnId>) {
        let name = &service.name;
        let requester = by.map_or_else(String::new, |id| {
            format!(
                " requested by '{}' ({})",
                self.log_name(id),
                self.loginfo(id)
            )
        });
        match &service.systemd_service {
            Some(unit) if self.options.systemd_activation && name != SYSTEMD_NAME => {
                log::info!(
                    "Activating via systemd: service name='{name}' unit='{unit}'{requester}"
                );
            }
            _ if self.config.servicehelper.is_some() => {
                log::info!("Activating service name='{name}'{requester} (using servicehelper)")
            }
            _ => log::info!("Activating service name='{name}'{requester}"),
        }
    }

    /// Send (or hold until systemd connects) an ActivationRequest for `unit`.
    fn request_systemd_activation(&mut self, unit: &str) {
        self.systemd_activation_request(unit, false);
    }

    /// `replay`: the request waited for systemd; monitors saw it already.
    fn systemd_activation_request(&mut self, unit: &str, replay: bool) {
        let mut body = BodyWriter::new();
        body.str(unit);
        match self.names.owner(SYSTEMD_NAME) {
            Some(systemd) => {
                let Some(peer) = self.peers.get_mut(systemd) else {
                    return;
                };
                let serial = peer.next_serial();
                let bytes =
                    MessageBuilder::signal(DRIVER_PATH, ACTIVATOR_IFACE, "ActivationRequest")
                        .destination(SYSTEMD_NAME)
                        .sender(DRIVER_NAME)
                        .flags(flags::NO_REPLY_EXPECTED)
                        .build(serial, &body);
                if replay {
                    self.emit_to_uncaptured(systemd, bytes);
                } else {
                    self.emit_to(systemd, bytes);
                }
            }
            None => {
                // Monitors see the request now; systemd gets it when it takes its name.
                let bytes =
                    MessageBuilder::signal(DRIVER_PATH, ACTIVATOR_IFACE, "ActivationRequest")
                        .destination(SYSTEMD_NAME)
                        .sender(DRIVER_NAME)
                        .flags(flags::NO_REPLY_EXPECTED)
                        .build(1, &body);
                self.capture_bus_message(bytes);
                self.starts
                    .systemd_backlog
                    .push(SystemdRequest::Activate(unit.to_owned()));
                // Make sure systemd itself gets started if it can be.
                if !self.starts.pending.contains_key(SYSTEMD_NAME) {
                    if let Some(s) = self.service_for(SYSTEMD_NAME) {
                        let _ = self.begin_start(&s, None);
                    }
                }
            }
        }
    }

    /// The reactor started the process for `name`.
    pub fn spawned(&mut self, name: &str, pid: u32) {
        if let Some(p) = self.starts.pending.get_mut(name) {
            p.pid = Some(pid);
        }
    }

    /// The reactor could not start the process for `name`.
    pub fn spawn_failed(&mut self, name: &str, why: &str) {
        self.fail_start(name, &BusError::new(ErrorKind::SpawnExecFailed, why));
    }

    /// A child process exited. Exit status 0 is ignored: a service that daemonizes
    /// exits before its child takes the name.
    pub fn child_exited(&mut self, pid: u32, code: Option<i32>, signal: Option<i32>) {
        let Some(name) = self
            .starts
            .pending
            .iter()
            .find(|(_, p)| p.pid == Some(pid))
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        match (code, signal) {
            // A service that forked into the background: wait for its name (or the timeout).
            (Some(0), _) => {}
            (Some(c), _) => {
                let error = if self.config.servicehelper.is_some() {
                    helper_exit_error(c)
                } else {
                    BusError::new(
                        ErrorKind::SpawnChildExited,
                        format!("Process {name} exited with status {c}"),
                    )
                };
                log::info!("Activated service '{name}' failed: {}", error.text);
                self.fail_start(&name, &error);
            }
            (None, Some(s)) => {
                let text = format!("Process {name} received signal {s}");
                log::info!("Activated service '{name}' failed: {text}");
                self.fail_start(&name, &BusError::new(ErrorKind::SpawnChildSignaled, text));
            }
            (None, None) => {}
        }
    }

    /// Fail every waiter of the start of `name` with `error`.
    pub(super) fn fail_start(&mut self, name: &str, error: &BusError) {
        let Some(p) = self.starts.pending.remove(name) else {
            return;
        };
        for w in p.waiting {
            if self.peers.get(w.from).map(|c| c.serial_no) != Some(w.from_no) {
                continue;
            }
            // Like ServiceUnknown, sent even for signals and NO_REPLY_EXPECTED calls.
            if w.msg.msg_type == message::METHOD_CALL || w.msg.msg_type == message::SIGNAL {
                self.reply_error_serial(w.from, w.msg.serial, error);
            }
        }
        for (c, no, serial) in p.callers {
            if self.peers.get(c).map(|x| x.serial_no) == Some(no) {
                self.reply_error_serial(c, serial, error);
            }
        }
    }

    /// `name` has a new primary owner: deliver what waited for it, answer StartServiceByName,
    /// and, if it is systemd, hand it the activation requests it missed.
    pub(super) fn name_acquired_hook(&mut self, name: &str) {
        if name == SYSTEMD_NAME && !self.starts.systemd_backlog.is_empty() {
            // (the backlog keeps request order: environment before later activations)
            let backlog = std::mem::take(&mut self.starts.systemd_backlog);
            for req in backlog {
                match req {
                    SystemdRequest::Activate(u) => self.systemd_activation_request(&u, true),
                    SystemdRequest::SetEnvironment(items) => {
                        self.send_set_environment(items, SYSTEMD_NAME)
                    }
                }
            }
        }
        let Some(p) = self.starts.pending.remove(name) else {
            return;
        };
        log::info!("Successfully activated service '{name}'");
        log::debug!(
            "{name} acquired: delivering {} waiting messages",
            p.waiting.len()
        );
        for w in p.waiting {
            if self.peers.get(w.from).map(|c| c.serial_no) != Some(w.from_no) {
                continue;
            }
            self.unicast_resolved(w.from, &w.msg, name, w.fds);
        }
        for (c, no, serial) in p.callers {
            if self.peers.get(c).map(|x| x.serial_no) == Some(no) {
                let mut body = BodyWriter::new();
                body.u32(1);
                self.reply_serial_body(c, serial, &body);
            }
        }
    }

    /// Expire starts whose `service_start_timeout` passed.
    pub(super) fn expire_starts(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .starts
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            let text = format!("Activation of {name} timed out");
            self.fail_start(&name, &BusError::new(ErrorKind::TimedOut, text));
        }
    }

    /// `org.freedesktop.systemd1.Activator.ActivationFailure(unit, error, message)` sent to the
    /// driver: honoured only from the primary owner of org.freedesktop.systemd1.
    pub(super) fn activation_failure(&mut self, id: ConnId, msg: &Message) {
        if msg.interface() != Some(ACTIVATOR_IFACE) || msg.member() != Some("ActivationFailure") {
            return;
        }
        if self.names.owner(SYSTEMD_NAME) != Some(id) || msg.signature() != "sss" {
            log::info!("ignoring ActivationFailure from a connection that is not systemd");
            return;
        }
        let mut r = BodyReader::new(msg);
        let (Ok(unit), Ok(error), Ok(text)) = (r.str(), r.str(), r.str()) else {
            return;
        };
        let names: Vec<String> = self
            .starts
            .pending
            .iter()
            .filter(|(_, p)| p.unit.as_deref() == Some(unit))
            .map(|(n, _)| n.clone())
            .collect();
        // systemd's error name is passed on as dbus-daemon does; one that is not a valid
        // error name cannot be sent, so the generic "child exited" stands in for it.
        let error = if crate::wire::names::is_valid_error_name(error) {
            BusError::relayed(ErrorKind::SpawnChildExited, error, text)
        } else {
            BusError::new(ErrorKind::SpawnChildExited, text)
        };
        for n in names {
            self.fail_start(&n, &error);
        }
    }

    /// UpdateActivationEnvironment: store the pairs and, with systemd activation, forward them
    /// to systemd's manager as SetEnvironment.
    pub(super) fn update_activation_env(&mut self, pairs: &[(&str, &str)]) -> Result<(), BusError> {
        self.activation_env
            .update(pairs)
            .map_err(|e| BusError::new(ErrorKind::InvalidArgs, e.to_string()))?;
        if self.options.systemd_activation {
            let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if let Some(unique) = self
                .names
                .owner(SYSTEMD_NAME)
                .and_then(|c| self.peers.get(c))
                .and_then(|p| p.unique_name.clone())
            {
                // With systemd connected the call goes to its unique name.
                self.send_set_environment(items, &unique);
            } else {
                // Delivered when systemd takes its name, like an activation.
                self.starts
                    .systemd_backlog
                    .push(SystemdRequest::SetEnvironment(items));
            }
        }
        Ok(())
    }

    /// `org.freedesktop.systemd1.Manager.SetEnvironment(items)` to systemd.
    fn send_set_environment(&mut self, items: Vec<String>, destination: &str) {
        let Some(systemd) = self.names.owner(SYSTEMD_NAME) else {
            return;
        };
        let mut body = BodyWriter::new();
        body.str_array(items.iter().map(|s| s.as_str()));
        let Some(peer) = self.peers.get_mut(systemd) else {
            return;
        };
        let serial = peer.next_serial();
        let bytes = MessageBuilder::method_call(
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "SetEnvironment",
        )
        .destination(destination)
        .sender(DRIVER_NAME)
        .flags(flags::NO_REPLY_EXPECTED)
        .build(serial, &body);
        self.emit_to(systemd, bytes);
    }

    /// Pids of activation children still pending (for diagnostics).
    pub fn pending_start_count(&self) -> usize {
        self.starts.pending.len()
    }
}

/// The error a failed start through the setuid launch helper gets for the helper's exit
/// status, in dbus-daemon's names and words (its `activation-exit-codes.h`). The service
/// runs in the helper's process, so its own exit status is read the same way.
fn helper_exit_error(status: i32) -> BusError {
    let (kind, text) = match status {
        2 => (
            ErrorKind::NoMemory,
            "Launcher could not run (out of memory)",
        ),
        3 => (
            ErrorKind::SpawnConfigInvalid,
            "Invalid configuration (missing or empty <user>?)",
        ),
        4 => (
            ErrorKind::SpawnSetupFailed,
            "Failed to setup environment correctly",
        ),
        5 => (
            ErrorKind::SpawnServiceNotValid,
            "Bus name is not valid or missing",
        ),
        6 => (
            ErrorKind::SpawnServiceNotFound,
            "Bus name not found in system service directory",
        ),
        7 => (
            ErrorKind::SpawnPermissionsInvalid,
            "The permission of the setuid helper is not correct",
        ),
        // dbus-daemon reports an invalid service file under PermissionsInvalid too.
        8 => (
            ErrorKind::SpawnPermissionsInvalid,
            "The service file is incorrect or does not have all required attributes",
        ),
        9 => (
            ErrorKind::SpawnExecFailed,
            "Cannot launch daemon, file not found or permissions invalid",
        ),
        10 => (ErrorKind::InvalidArgs, "Invalid arguments to command line"),
        11 => (
            ErrorKind::SpawnChildSignaled,
            "Launched child was signaled, it probably crashed",
        ),
        _ => {
            return BusError::new(
                ErrorKind::SpawnChildExited,
                format!("Launch helper exited with unknown return code {status}"),
            )
        }
    };
    BusError::new(kind, text)
}
