//! The bus driver `org.freedesktop.DBus`: method lookup, argument checks and handlers.

use super::connection::{Fds, PeerSockets, Phase};
use super::error::{BusError, BusResult, ErrorKind};
use super::match_rule::{MatchError, MatchRule};
use super::names::{ReleaseReply, RequestReply};
use super::{Bus, ConnId, DRIVER_IFACE, DRIVER_NAME, DRIVER_PATH};
use crate::wire::marshal::{BodyReader, BodyWriter};
use crate::wire::message::Message;
use crate::wire::names;
use std::time::Instant;

const PROPS: &str = "org.freedesktop.DBus.Properties";
const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
const PEER: &str = "org.freedesktop.DBus.Peer";
const MONITORING: &str = "org.freedesktop.DBus.Monitoring";
const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
const CONTAINERS: &str = super::containers::CONTAINERS_IFACE;

/// One driver method: where it lives and what it takes.
struct Method {
    iface: &'static str,
    member: &'static str,
    sig: &'static str,
    privileged: bool,
    canonical_only: bool,
    /// Refused to connections accepted on a container socket.
    no_containers: bool,
    /// A second accepted signature (Containers1.AddServer's 2024 form).
    alt_sig: Option<&'static str>,
}

const fn m(iface: &'static str, member: &'static str, sig: &'static str) -> Method {
    Method {
        iface,
        member,
        sig,
        privileged: false,
        canonical_only: false,
        no_containers: false,
        alt_sig: None,
    }
}

/// A Containers1 method (canonical path only).
const fn c(member: &'static str, sig: &'static str, no_containers: bool) -> Method {
    Method {
        canonical_only: true,
        no_containers,
        ..m(CONTAINERS, member, sig)
    }
}

/// Every method, in lookup order (the first interface with the member wins when the call
/// names no interface).
const METHODS: &[Method] = &[
    m(DRIVER_IFACE, "Hello", ""),
    m(DRIVER_IFACE, "RequestName", "su"),
    m(DRIVER_IFACE, "ReleaseName", "s"),
    m(DRIVER_IFACE, "StartServiceByName", "su"),
    Method {
        privileged: true,
        canonical_only: true,
        ..m(DRIVER_IFACE, "UpdateActivationEnvironment", "a{ss}")
    },
    m(DRIVER_IFACE, "NameHasOwner", "s"),
    m(DRIVER_IFACE, "ListNames", ""),
    m(DRIVER_IFACE, "ListActivatableNames", ""),
    m(DRIVER_IFACE, "AddMatch", "s"),
    m(DRIVER_IFACE, "RemoveMatch", "s"),
    m(DRIVER_IFACE, "GetNameOwner", "s"),
    m(DRIVER_IFACE, "ListQueuedOwners", "s"),
    m(DRIVER_IFACE, "GetConnectionUnixUser", "s"),
    m(DRIVER_IFACE, "GetConnectionUnixProcessID", "s"),
    m(DRIVER_IFACE, "GetAdtAuditSessionData", "s"),
    m(DRIVER_IFACE, "GetConnectionSELinuxSecurityContext", "s"),
    m(DRIVER_IFACE, "ReloadConfig", ""),
    m(DRIVER_IFACE, "GetId", ""),
    m(DRIVER_IFACE, "GetConnectionCredentials", "s"),
    Method {
        canonical_only: true,
        ..m(PROPS, "Get", "ss")
    },
    Method {
        canonical_only: true,
        ..m(PROPS, "GetAll", "s")
    },
    Method {
        canonical_only: true,
        ..m(PROPS, "Set", "ssv")
    },
    m(INTROSPECTABLE, "Introspect", ""),
    Method {
        privileged: true,
        canonical_only: true,
        ..m(MONITORING, "BecomeMonitor", "asu")
    },
    Method {
        canonical_only: true,
        no_containers: true,
        ..m(STATS, "GetStats", "")
    },
    Method {
        canonical_only: true,
        no_containers: true,
        ..m(STATS, "GetConnectionStats", "s")
    },
    Method {
        canonical_only: true,
        no_containers: true,
        ..m(STATS, "GetAllMatchRules", "")
    },
    m(PEER, "Ping", ""),
    m(PEER, "GetMachineId", ""),
    Method {
        alt_sig: Some(super::containers::ADD_SERVER_2024_SIG),
        ..c("AddServer", "ssa{sv}a{sv}", true)
    },
    c("StopListening", "o", true),
    c("StopInstance", "o", true),
    c("GetConnectionInstance", "s", false),
    c("GetConnectionInfo", "s", false),
    c("GetInstanceInfo", "o", false),
    c("RequestHeader", "", false),
];

/// Interfaces reachable only at the canonical path.
fn iface_at(iface: &str, canonical: bool) -> bool {
    match iface {
        DRIVER_IFACE | INTROSPECTABLE | PEER => true,
        PROPS | MONITORING | STATS | CONTAINERS => canonical,
        _ => false,
    }
}

/// Handle a method call addressed to the driver.
pub fn handle(
    bus: &mut Bus,
    id: ConnId,
    msg: &Message,
    fds: Option<Fds>,
    now: Instant,
    sockets: &dyn PeerSockets,
) {
    let _ = now;
    let member = msg.member().unwrap_or("");
    let canonical = msg.path() == Some(DRIVER_PATH);

    // Before Hello only Hello is allowed.
    let phase = bus.peers.get(id).map(|p| p.phase);
    if phase == Some(Phase::Authenticated)
        && !(member == "Hello" && matches!(msg.interface(), None | Some(DRIVER_IFACE)))
    {
        let err = BusError::new(
            ErrorKind::AccessDenied,
            "Client tried to send a message other than Hello without being registered",
        );
        bus.reply_error(id, msg, err);
        return;
    }
    // The XML policy applies to the driver like to any destination (Hello is always allowed).
    if member != "Hello" {
        if let Err(err) = bus.check_send_to_name(id, msg, DRIVER_NAME) {
            bus.reply_error(id, msg, err);
            return;
        }
    }

    let method = match msg.interface() {
        Some(iface) => {
            if !iface_at(iface, canonical) {
                let err = BusError::new(
                    ErrorKind::UnknownInterface,
                    format!(
                        "Interface \"{iface}\" not found at path {}",
                        msg.path().unwrap_or("")
                    ),
                );
                bus.reply_error(id, msg, err);
                return;
            }
            METHODS
                .iter()
                .find(|x| x.iface == iface && x.member == member)
        }
        None => METHODS
            .iter()
            .find(|x| x.member == member && iface_at(x.iface, canonical)),
    };
    let Some(method) = method else {
        let err = BusError::new(
            ErrorKind::UnknownMethod,
            format!(
                "Method \"{member}\" with signature \"{}\" on interface \"{}\" doesn't exist",
                msg.signature(),
                msg.interface().unwrap_or("(null)")
            ),
        );
        bus.reply_error(id, msg, err);
        return;
    };
    if method.no_containers && bus.peers.get(id).is_some_and(|p| p.container.is_some()) {
        log::warn!(
            "contained connection {} tried to call {}.{}",
            bus.peers.get(id).map(|p| p.sender_name()).unwrap_or(""),
            method.iface,
            method.member
        );
        let err = BusError::new(
            ErrorKind::AccessDenied,
            format!(
                "Connection {} is in a container and may not call {}.{}",
                bus.peers.get(id).map(|p| p.sender_name()).unwrap_or(""),
                method.iface,
                method.member
            ),
        );
        bus.reply_error(id, msg, err);
        return;
    }
    if method.privileged && !bus.is_privileged(id) {
        let err = BusError::new(
            ErrorKind::AccessDenied,
            format!(
                "Connection {} is not allowed to call {}.{}",
                bus.peers.get(id).map(|p| p.sender_name()).unwrap_or(""),
                method.iface,
                method.member
            ),
        );
        bus.reply_error(id, msg, err);
        return;
    }
    if method.canonical_only && !canonical {
        let err = BusError::new(
            ErrorKind::AccessDenied,
            format!(
                "Method '{}' is only available at the canonical object path '{DRIVER_PATH}'",
                method.member
            ),
        );
        bus.reply_error(id, msg, err);
        return;
    }
    if msg.signature() != method.sig && method.alt_sig != Some(msg.signature()) {
        let err = BusError::new(
            ErrorKind::InvalidArgs,
            format!(
                "Call to {} has wrong args ({}, expected {})",
                method.member,
                msg.signature(),
                method.sig
            ),
        );
        bus.reply_error(id, msg, err);
        return;
    }
    if method.iface == CONTAINERS {
        super::containers::call(bus, id, msg, method.member, fds.as_ref());
        return;
    }
    let result = call(bus, id, msg, method, sockets);
    match result {
        Ok(Some(body)) => {
            if !msg.no_reply_expected() {
                bus.reply(id, msg, &body);
            }
        }
        Ok(None) => {}
        Err(e) => bus.reply_error(id, msg, e),
    }
}

/// Run a method whose interface, privilege, path and signature were checked.
/// `Ok(None)` means the handler already sent its reply (to order it among signals).
fn call(
    bus: &mut Bus,
    id: ConnId,
    msg: &Message,
    method: &Method,
    sockets: &dyn PeerSockets,
) -> BusResult<Option<BodyWriter>> {
    let mut r = BodyReader::new(msg);
    let mut out = BodyWriter::new();
    let bad = |_| BusError::new(ErrorKind::InvalidArgs, "Invalid arguments");
    match (method.iface, method.member) {
        (DRIVER_IFACE, "Hello") => {
            hello(bus, id, msg)?;
            return Ok(None);
        }
        (DRIVER_IFACE, "RequestName") => {
            let name = r.str().map_err(bad)?;
            let flags = r.u32().map_err(bad)?;
            let reply = request_name(bus, id, name, flags)?;
            out.u32(reply);
            if !msg.no_reply_expected() {
                bus.reply(id, msg, &out);
            }
            return Ok(None);
        }
        (DRIVER_IFACE, "ReleaseName") => {
            let name = r.str().map_err(bad)?;
            check_request_name(name, "release")?;
            let mut events = Vec::new();
            let reply = bus.names.release(name, id, &mut events);
            bus.emit_name_events(events);
            out.u32(match reply {
                ReleaseReply::Released => 1,
                ReleaseReply::NonExistent => 2,
                ReleaseReply::NotOwner => 3,
            });
            if !msg.no_reply_expected() {
                bus.reply(id, msg, &out);
            }
            return Ok(None);
        }
        (DRIVER_IFACE, "StartServiceByName") => {
            let name = r.str().map_err(bad)?;
            let _flags = r.u32().map_err(bad)?;
            match bus.start_service_by_name(id, name, msg.serial)? {
                Some(code) => {
                    out.u32(code);
                }
                // Answered once the service has taken its name (or failed).
                None => return Ok(None),
            }
        }
        (DRIVER_IFACE, "UpdateActivationEnvironment") => {
            if bus.config.servicehelper.is_some() {
                return Err(BusError::new(
                    ErrorKind::AccessDenied,
                    "Cannot change activation environment on a system bus.",
                ));
            }
            let pairs = r.str_str_dict().map_err(bad)?;
            bus.update_activation_env(&pairs)?;
        }
        (DRIVER_IFACE, "NameHasOwner") => {
            let name = r.str().map_err(bad)?;
            out.bool(name == DRIVER_NAME || bus.resolve(name).is_some());
        }
        (DRIVER_IFACE, "ListNames") => {
            let mut v: Vec<&str> = vec![DRIVER_NAME];
            v.extend(bus.unique.keys().map(|k| &**k));
            v.extend(bus.names.names().map(|k| &**k));
            out.str_array(v);
        }
        (DRIVER_IFACE, "ListActivatableNames") => {
            let mut names: Vec<String> = vec![DRIVER_NAME.to_owned()];
            names.extend(bus.services.names().map(str::to_owned));
            out.str_array(names.iter().map(|s| s.as_str()));
        }
        (DRIVER_IFACE, "AddMatch") => {
            let text = r.str().map_err(bad)?;
            add_match(bus, id, text)?;
        }
        (DRIVER_IFACE, "RemoveMatch") => {
            let text = r.str().map_err(bad)?;
            let rule = MatchRule::parse(text).map_err(match_error)?;
            if !bus.matches.remove_equal(id, &rule) {
                return Err(BusError::new(
                    ErrorKind::MatchRuleNotFound,
                    "The given match rule wasn't found and can't be removed",
                ));
            }
        }
        (DRIVER_IFACE, "GetNameOwner") => {
            let name = r.str().map_err(bad)?;
            if name == DRIVER_NAME {
                out.str(DRIVER_NAME);
            } else {
                let owner = owner_of(bus, name)?;
                let u = bus.peers[owner].unique_name.clone().unwrap_or_default();
                out.str(&u);
            }
        }
        (DRIVER_IFACE, "ListQueuedOwners") => {
            let name = r.str().map_err(bad)?;
            if name == DRIVER_NAME {
                out.str_array([DRIVER_NAME]);
            } else if name.starts_with(':') {
                owner_of(bus, name)?;
                out.str_array([name]);
            } else {
                let Some(q) = bus.names.queue(name) else {
                    return Err(no_owner(name));
                };
                let ids: Vec<ConnId> = q.collect();
                let v: Vec<String> = ids
                    .iter()
                    .filter_map(|&c| {
                        bus.peers
                            .get(c)
                            .and_then(|p| p.unique_name.as_deref().map(str::to_owned))
                    })
                    .collect();
                out.str_array(v.iter().map(|s| s.as_str()));
            }
        }
        (DRIVER_IFACE, "GetConnectionUnixUser") => {
            let name = r.str().map_err(bad)?;
            match creds_of(bus, name)?.uid {
                Some(uid) => {
                    out.u32(uid);
                }
                None => {
                    return Err(BusError::new(
                        ErrorKind::Failed,
                        format!("Could not determine UID for '{name}'"),
                    ))
                }
            }
        }
        (DRIVER_IFACE, "GetConnectionUnixProcessID") => {
            let name = r.str().map_err(bad)?;
            match creds_of(bus, name)?.pid {
                Some(pid) => {
                    out.u32(pid);
                }
                None => {
                    return Err(BusError::new(
                        ErrorKind::UnixProcessIdUnknown,
                        format!("Could not determine PID for '{name}'"),
                    ))
                }
            }
        }
        (DRIVER_IFACE, "GetAdtAuditSessionData") => {
            let name = r.str().map_err(bad)?;
            creds_of(bus, name)?;
            return Err(BusError::new(
                ErrorKind::AdtAuditDataUnknown,
                format!("Could not determine audit session data for '{name}'"),
            ));
        }
        (DRIVER_IFACE, "GetConnectionSELinuxSecurityContext") => {
            let name = r.str().map_err(bad)?;
            creds_of(bus, name)?;
            return Err(BusError::new(
                ErrorKind::SelinuxSecurityContextUnknown,
                format!("Could not determine security context for '{name}'"),
            ));
        }
        (DRIVER_IFACE, "ReloadConfig") => {
            if let Err(e) = bus.reload_from_disk() {
                log::warn!("Unable to reload configuration: {e}");
                let kind = if e.is_not_found() {
                    ErrorKind::FileNotFound
                } else {
                    ErrorKind::Failed
                };
                return Err(BusError::new(kind, e.to_string()));
            }
        }
        (DRIVER_IFACE, "GetId") => {
            out.str(&bus.bus_id);
        }
        (DRIVER_IFACE, "GetConnectionCredentials") => {
            let name = r.str().map_err(bad)?;
            let c = creds_of(bus, name)?;
            let instance = if name == DRIVER_NAME {
                None
            } else {
                bus.resolve(name)
                    .and_then(|conn| bus.container_path_of(conn))
                    .cloned()
            };
            // ProcessFD only for callers that can receive fds (spec 0.42).
            let caller_fds = bus.peers.get(id).is_some_and(|p| p.unix_fd);
            let pidfd = match bus.resolve(name) {
                Some(conn) if caller_fds && name != DRIVER_NAME => sockets.peer_pidfd(conn),
                _ => None,
            };
            c.write_dict(&mut out, instance.as_deref(), pidfd.is_some());
            if let Some(fd) = pidfd {
                if !msg.no_reply_expected() {
                    bus.reply_with_fds(id, msg, &out, vec![fd]);
                }
                return Ok(None);
            }
        }
        (PROPS, "Get") => {
            let iface = r.str().map_err(bad)?;
            let prop = r.str().map_err(bad)?;
            props_check_iface(iface)?;
            let value = property(bus, iface, prop)?;
            out.variant("as", |v| {
                v.str_array(value.iter().copied());
            });
        }
        (PROPS, "GetAll") => {
            let iface = r.str().map_err(bad)?;
            props_check_iface(iface)?;
            let props: Vec<(&str, Vec<&str>)> = if iface == DRIVER_IFACE || iface.is_empty() {
                vec![("Features", features(bus)), ("Interfaces", interfaces())]
            } else if iface == CONTAINERS {
                vec![(
                    "SupportedArguments",
                    super::containers::SUPPORTED_ARGUMENTS.to_vec(),
                )]
            } else {
                Vec::new()
            };
            out.array("{sv}", |a| {
                for (k, vals) in &props {
                    a.dict_entry(|e| {
                        e.str(k).variant("as", |v| {
                            v.str_array(vals.iter().copied());
                        });
                    });
                }
            });
        }
        (PROPS, "Set") => {
            let iface = r.str().map_err(bad)?;
            let prop = r.str().map_err(bad)?;
            props_check_iface(iface)?;
            property(bus, iface, prop)?;
            return Err(BusError::new(
                ErrorKind::PropertyReadOnly,
                format!("Property '{prop}' on interface '{iface}' is read-only"),
            ));
        }
        (INTROSPECTABLE, "Introspect") => {
            out.str(&introspect(msg.path().unwrap_or("/")));
        }
        (MONITORING, "BecomeMonitor") => {
            let rules = r.str_array().map_err(bad)?;
            let flags = r.u32().map_err(bad)?;
            if flags != 0 {
                return Err(BusError::new(
                    ErrorKind::InvalidArgs,
                    "BecomeMonitor flags must be 0",
                ));
            }
            let mut parsed = Vec::with_capacity(rules.len());
            for text in rules {
                let mut rule = MatchRule::parse(text).map_err(match_error)?;
                rule.eavesdrop = true;
                parsed.push(rule);
            }
            if !msg.no_reply_expected() {
                bus.reply(id, msg, &out);
            }
            bus.make_monitor(id, parsed);
            return Ok(None);
        }
        (STATS, "GetStats") => {
            let active = bus.completed_count();
            let incomplete = bus.incomplete_count();
            let serial = bus.stats_serial;
            bus.stats_serial = serial.wrapping_add(1);
            let stats = [
                ("Serial", serial),
                ("ActiveConnections", active as u32),
                ("IncompleteConnections", incomplete as u32),
                ("MatchRules", bus.matches.total() as u32),
                ("PeakMatchRules", bus.peak_match_rules as u32),
                (
                    "PeakMatchRulesPerConnection",
                    bus.peers
                        .iter()
                        .map(|(_, p)| p.peak_match_rules)
                        .max()
                        .unwrap_or(0) as u32,
                ),
                (
                    "BusNames",
                    (bus.names.names().count() + bus.unique.len()) as u32,
                ),
                ("PeakBusNames", bus.peak_names as u32),
                (
                    "PeakBusNamesPerConnection",
                    bus.peers
                        .iter()
                        .map(|(_, p)| p.peak_names)
                        .max()
                        .unwrap_or(0) as u32,
                ),
            ];
            write_u32_dict(&mut out, &stats);
        }
        (STATS, "GetConnectionStats") => {
            let name = r.str().map_err(bad)?;
            if name == DRIVER_NAME {
                return Err(BusError::new(
                    ErrorKind::InvalidArgs,
                    "The bus driver has no connection statistics",
                ));
            }
            let c = owner_of(bus, name)?;
            let serial = bus.conn_stats_serial;
            bus.conn_stats_serial = serial.wrapping_add(1);
            let p = &bus.peers[c];
            let unique = p.unique_name.clone().unwrap_or_default();
            // As in dbus-daemon, Incoming*/Outgoing* describe the queues as they are now (the
            // bus keeps no incoming queue: each message is routed as soon as it is whole).
            let stats = [
                ("Serial", serial),
                ("MatchRules", bus.matches.count(c) as u32),
                ("PeakMatchRules", p.peak_match_rules as u32),
                ("BusNames", (bus.names.count(c) + 1) as u32),
                ("PeakBusNames", p.peak_names as u32),
                ("IncomingMessages", 0),
                ("IncomingBytes", 0),
                ("IncomingFDs", 0),
                ("PeakIncomingBytes", p.peak_in_bytes),
                ("PeakIncomingFDs", p.peak_in_fds),
                ("OutgoingMessages", p.out.len() as u32),
                ("OutgoingBytes", p.out_bytes as u32),
                ("OutgoingFDs", p.out_fds as u32),
                ("PeakOutgoingBytes", p.peak_out_bytes as u32),
                ("PeakOutgoingFDs", p.peak_out_fds as u32),
            ];
            out.array("{sv}", |a| {
                a.dict_entry(|e| {
                    e.str("UniqueName").variant("s", |v| {
                        v.str(&unique);
                    });
                });
                for (k, val) in stats {
                    a.dict_entry(|e| {
                        e.str(k).variant("u", |v| {
                            v.u32(val);
                        });
                    });
                }
            });
        }
        (STATS, "GetAllMatchRules") => {
            let owners: Vec<(String, Vec<String>)> = bus
                .peers
                .iter()
                .filter_map(|(c, p)| {
                    let u = p.unique_name.as_deref()?;
                    let rules: Vec<String> =
                        bus.matches.rules_of(c).map(|r| r.canonical()).collect();
                    Some((u.to_owned(), rules))
                })
                .collect();
            out.array("{sas}", |a| {
                for (u, rules) in &owners {
                    a.dict_entry(|e| {
                        e.str(u).str_array(rules.iter().map(|s| s.as_str()));
                    });
                }
            });
        }
        (PEER, "Ping") => {}
        (PEER, "GetMachineId") => {
            out.str(&bus.machine_id);
        }
        _ => {
            return Err(BusError::new(ErrorKind::UnknownMethod, "Unknown method"));
        }
    }
    Ok(Some(out))
}

fn write_u32_dict(out: &mut BodyWriter, stats: &[(&str, u32)]) {
    out.array("{sv}", |a| {
        for &(k, val) in stats {
            a.dict_entry(|e| {
                e.str(k).variant("u", |v| {
                    v.u32(val);
                });
            });
        }
    });
}

fn hello(bus: &mut Bus, id: ConnId, msg: &Message) -> BusResult<()> {
    let Some(peer) = bus.peers.get(id) else {
        return Ok(());
    };
    if peer.phase == Phase::Active {
        return Err(BusError::new(
            ErrorKind::Failed,
            "Already handled an Hello message",
        ));
    }
    let uid = peer.creds.uid;
    let limits = &bus.config.limits;
    if bus.completed_count() >= limits.max_completed_connections as usize {
        return Err(BusError::new(
            ErrorKind::LimitsExceeded,
            "The maximum number of active connections has been reached",
        ));
    }
    if bus.completed_for_uid(uid) >= limits.max_connections_per_user as usize {
        return Err(BusError::new(
            ErrorKind::LimitsExceeded,
            "The maximum number of active connections for this user has been reached",
        ));
    }
    let Some(name) = bus.activate(id) else {
        return Ok(());
    };
    let mut out = BodyWriter::new();
    out.str(&name);
    bus.reply(id, msg, &out);
    let mut b = BodyWriter::new();
    b.str(&name).str("").str(&name);
    bus.driver_broadcast("NameOwnerChanged", &b);
    let mut b = BodyWriter::new();
    b.str(&name);
    bus.driver_signal_to(id, "NameAcquired", &b);
    Ok(())
}

fn check_request_name(name: &str, verb: &str) -> BusResult<()> {
    if !names::is_valid_bus_name(name) {
        return Err(BusError::new(
            ErrorKind::InvalidArgs,
            format!("Requested bus name \"{name}\" is not valid"),
        ));
    }
    if name.starts_with(':') {
        return Err(BusError::new(
            ErrorKind::InvalidArgs,
            format!("Cannot {verb} a unique name '{name}'"),
        ));
    }
    if name == DRIVER_NAME {
        return Err(BusError::new(
            ErrorKind::InvalidArgs,
            format!("Connection is not allowed to {verb} name '{DRIVER_NAME}' because that is reserved for the message bus"),
        ));
    }
    Ok(())
}

fn request_name(bus: &mut Bus, id: ConnId, name: &str, flags: u32) -> BusResult<u32> {
    check_request_name(name, "own")?;
    let Some(peer) = bus.peers.get(id) else {
        return Ok(3);
    };
    if !peer.policy.can_own(name) {
        return Err(BusError::new(
            ErrorKind::AccessDenied,
            format!(
                "Connection \"{}\" is not allowed to own the service \"{name}\" due to security policies in the configuration file",
                peer.sender_name()
            ),
        ));
    }
    let max = bus.config.limits.max_names_per_connection as usize;
    if bus.names.count(id) + 1 >= max {
        return Err(BusError::new(
            ErrorKind::LimitsExceeded,
            format!(
                "Connection \"{}\" is not allowed to own more services (increase limits in configuration file if required; max_names_per_connection={max})",
                peer.sender_name()
            ),
        ));
    }
    let mut events = Vec::new();
    let reply = bus.names.request(name, id, flags, &mut events);
    bus.emit_name_events(events);
    bus.update_peaks(id);
    Ok(match reply {
        RequestReply::PrimaryOwner => 1,
        RequestReply::InQueue => 2,
        RequestReply::Exists => 3,
        RequestReply::AlreadyOwner => 4,
    })
}

fn add_match(bus: &mut Bus, id: ConnId, text: &str) -> BusResult<()> {
    let max = bus.config.limits.max_match_rules_per_connection as usize;
    if bus.matches.count(id) >= max {
        return Err(BusError::new(
            ErrorKind::LimitsExceeded,
            format!("Connection is not allowed to add more matches (increase limits in configuration file if required; max_match_rules_per_connection={max})"),
        ));
    }
    let rule = MatchRule::parse(text).map_err(match_error)?;
    if rule.eavesdrop && !bus.is_privileged(id) {
        return Err(BusError::new(
            ErrorKind::AccessDenied,
            "Connection is not allowed to eavesdrop",
        ));
    }
    bus.matches.insert(id, rule);
    bus.update_peaks(id);
    Ok(())
}

fn match_error(e: MatchError) -> BusError {
    match e {
        MatchError::TooLong => BusError::new(ErrorKind::LimitsExceeded, e.to_string()),
        MatchError::Invalid(_) => BusError::new(ErrorKind::MatchRuleInvalid, e.to_string()),
    }
}

fn no_owner(name: &str) -> BusError {
    BusError::new(
        ErrorKind::NameHasNoOwner,
        format!("Could not get owner of name '{name}': no such name"),
    )
}

fn owner_of(bus: &Bus, name: &str) -> BusResult<ConnId> {
    bus.resolve(name).ok_or_else(|| no_owner(name))
}

fn creds_of(bus: &Bus, name: &str) -> BusResult<super::connection::Credentials> {
    if name == DRIVER_NAME {
        return Ok(super::connection::Credentials {
            uid: Some(bus.daemon_uid),
            pid: Some(std::process::id()),
            gids: None,
            security_label: None,
        });
    }
    let c = owner_of(bus, name)?;
    Ok(bus.peers[c].creds.clone())
}

fn props_check_iface(iface: &str) -> BusResult<()> {
    if iface.is_empty() || iface_at(iface, true) {
        Ok(())
    } else {
        Err(BusError::new(
            ErrorKind::UnknownInterface,
            format!("Interface \"{iface}\" not found at path {DRIVER_PATH}"),
        ))
    }
}

fn property<'a>(bus: &'a Bus, iface: &str, prop: &str) -> BusResult<Vec<&'a str>> {
    if iface == DRIVER_IFACE || iface.is_empty() {
        match prop {
            "Features" => return Ok(features(bus)),
            "Interfaces" => return Ok(interfaces()),
            _ => {}
        }
    }
    if iface == CONTAINERS && prop == "SupportedArguments" {
        return Ok(super::containers::SUPPORTED_ARGUMENTS.to_vec());
    }
    Err(BusError::new(
        ErrorKind::UnknownProperty,
        format!("Property \"{prop}\" not found on interface \"{iface}\""),
    ))
}

fn features(bus: &Bus) -> Vec<&'static str> {
    let mut v = vec!["HeaderFiltering"];
    if bus.options.systemd_activation {
        v.push("SystemdActivation");
    }
    v
}

fn interfaces() -> Vec<&'static str> {
    vec![MONITORING, STATS, CONTAINERS]
}

/// Introspection XML for `path`.
pub fn introspect(path: &str) -> String {
    let mut s = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n\"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
    );
    s.push_str(INTROSPECT_DBUS);
    s.push_str(INTROSPECT_COMMON);
    if path == DRIVER_PATH {
        s.push_str(INTROSPECT_CANONICAL);
    }
    match path {
        "/" => s.push_str("  <node name=\"org/freedesktop/DBus\"/>\n"),
        "/org" => s.push_str("  <node name=\"freedesktop/DBus\"/>\n"),
        "/org/freedesktop" => s.push_str("  <node name=\"DBus\"/>\n"),
        _ => {}
    }
    s.push_str("</node>\n");
    s
}

const INTROSPECT_DBUS: &str = r#"  <interface name="org.freedesktop.DBus">
    <method name="Hello"><arg direction="out" type="s"/></method>
    <method name="RequestName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="ReleaseName"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="StartServiceByName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="UpdateActivationEnvironment"><arg direction="in" type="a{ss}"/></method>
    <method name="NameHasOwner"><arg direction="in" type="s"/><arg direction="out" type="b"/></method>
    <method name="ListNames"><arg direction="out" type="as"/></method>
    <method name="ListActivatableNames"><arg direction="out" type="as"/></method>
    <method name="AddMatch"><arg direction="in" type="s"/></method>
    <method name="RemoveMatch"><arg direction="in" type="s"/></method>
    <method name="GetNameOwner"><arg direction="in" type="s"/><arg direction="out" type="s"/></method>
    <method name="ListQueuedOwners"><arg direction="in" type="s"/><arg direction="out" type="as"/></method>
    <method name="GetConnectionUnixUser"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetConnectionUnixProcessID"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetAdtAuditSessionData"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionSELinuxSecurityContext"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="ReloadConfig"/>
    <method name="GetId"><arg direction="out" type="s"/></method>
    <method name="GetConnectionCredentials"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <property name="Features" type="as" access="read"><annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="const"/></property>
    <property name="Interfaces" type="as" access="read"><annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="const"/></property>
    <signal name="NameOwnerChanged"><arg type="s"/><arg type="s"/><arg type="s"/></signal>
    <signal name="NameLost"><arg type="s"/></signal>
    <signal name="NameAcquired"><arg type="s"/></signal>
    <signal name="ActivatableServicesChanged"/>
  </interface>
"#;

const INTROSPECT_COMMON: &str = r#"  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg direction="out" type="s"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="GetMachineId"><arg direction="out" type="s"/></method>
    <method name="Ping"/>
  </interface>
"#;

const INTROSPECT_CANONICAL: &str = r#"  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="out" type="v"/></method>
    <method name="GetAll"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="Set"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="in" type="v"/></method>
    <signal name="PropertiesChanged"><arg type="s" name="interface_name"/><arg type="a{sv}" name="changed_properties"/><arg type="as" name="invalidated_properties"/></signal>
  </interface>
  <interface name="org.freedesktop.DBus.Monitoring">
    <method name="BecomeMonitor"><arg direction="in" type="as"/><arg direction="in" type="u"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Debug.Stats">
    <method name="GetStats"><arg direction="out" type="a{sv}"/></method>
    <method name="GetConnectionStats"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="GetAllMatchRules"><arg direction="out" type="a{sas}"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Containers1">
    <method name="AddServer"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="in" type="a{sv}"/><arg direction="in" type="a{sv}"/><arg direction="out" type="o"/><arg direction="out" type="ay"/><arg direction="out" type="s"/></method>
    <method name="StopInstance"><arg direction="in" type="o"/></method>
    <method name="StopListening"><arg direction="in" type="o"/></method>
    <method name="GetConnectionInstance"><arg direction="in" type="s"/><arg direction="out" type="o"/><arg direction="out" type="a{sv}"/><arg direction="out" type="s"/><arg direction="out" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="GetConnectionInfo"><arg direction="in" type="s"/><arg direction="out" type="o"/><arg direction="out" type="a{sv}"/><arg direction="out" type="s"/><arg direction="out" type="s"/><arg direction="out" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="GetInstanceInfo"><arg direction="in" type="o"/><arg direction="out" type="a{sv}"/><arg direction="out" type="s"/><arg direction="out" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="RequestHeader"/>
    <property name="SupportedArguments" type="as" access="read"><annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="const"/></property>
    <signal name="InstanceRemoved"><arg type="o" name="path"/></signal>
  </interface>
"#;
