//! The XML security policy (`<policy>` / `<allow>` / `<deny>`, as dbus-daemon reads it), compiled.
//!
//! [`PolicyBuilder`] collects rules while the configuration is parsed (the parser hands each
//! `<policy>` and rule element's attributes to [`parse_policy_context`] and [`parse_rule`]);
//! [`PolicyBuilder::build`] turns them into a [`Policy`]. At connection time the bus asks the
//! `Policy` for a [`ConnPolicy`]: the send/receive/own rules that apply to that connection, in
//! application order (default, groups, user, at_console, mandatory), shared between connections
//! that get the same list. Every decision walks that list backwards and stops at the first matching
//! rule ("last matching rule wins"); nothing matching means deny.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;

/// dbus-daemon's bound for `min_fds`/`max_fds` (its maximum message length / 4).
const MAX_FDS_ATTR: u32 = 134_217_728 / 4;

/// A send or receive rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MsgRule {
    allow: bool,
    /// 0 = any type.
    msg_type: u8,
    path: Option<Box<str>>,
    interface: Option<Box<str>>,
    member: Option<Box<str>>,
    error: Option<Box<str>>,
    /// `send_destination[_prefix]` or `receive_sender`.
    name: Option<Box<str>>,
    name_is_prefix: bool,
    /// `send_broadcast`: None = either.
    broadcast: Option<bool>,
    requested_reply: bool,
    eavesdrop: bool,
    min_fds: u32,
    max_fds: u32,
}

/// An `own` / `own_prefix` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnRule {
    allow: bool,
    /// None = `own="*"`.
    name: Option<Box<str>>,
    prefix: bool,
}

/// A connect-time `user=` / `group=` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnectRule {
    allow: bool,
    is_group: bool,
    /// None = `*`.
    id: Option<u32>,
}

/// One compiled `<allow>` or `<deny>` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(RuleKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleKind {
    Send(MsgRule),
    Receive(MsgRule),
    Own(OwnRule),
    Connect(ConnectRule),
}

/// Why a `<policy>`, `<allow>` or `<deny>` element was refused. Displays as dbus-daemon
/// words it (configuration errors are shown to administrators and checked by tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// An attribute the element does not take.
    UnknownAttribute {
        /// `policy`, `allow` or `deny`.
        element: &'static str,
        /// The attribute.
        attr: String,
    },
    /// The same attribute given twice.
    RepeatedAttribute {
        /// `policy`, `allow` or `deny`.
        element: &'static str,
        /// The attribute.
        attr: String,
    },
    /// `<policy>` without exactly one of `context`, `user`, `group`, `at_console`.
    PolicySelector,
    /// `context=` other than `default` or `mandatory`.
    BadContext(String),
    /// `at_console=` other than `true` or `false`.
    BadAtConsole(String),
    /// A rule element without attributes.
    NoAttributes(&'static str),
    /// A member named without an interface or a path.
    MemberWithoutInterface(&'static str),
    /// Attributes that cannot appear together on one rule.
    Combination {
        /// `allow` or `deny`.
        element: &'static str,
        /// Which ones.
        conflict: Conflict,
    },
    /// `send_type`/`receive_type` that is no message type.
    BadMessageType(String),
    /// `send_broadcast="true"` with a `send_destination`: such a rule matches nothing.
    BroadcastWithDestination(String),
    /// A boolean attribute that is neither `true` nor `false`.
    BadBool {
        /// The attribute.
        attr: &'static str,
        /// Its value.
        value: String,
    },
    /// `min_fds`/`max_fds` out of range.
    BadFds {
        /// The attribute.
        attr: &'static str,
        /// Its value.
        value: String,
    },
    /// A `user=`/`group=` connect rule (bus-global) inside a per-user or per-group block;
    /// the value is `user` or `group`.
    GlobalRuleScoped(&'static str),
}

/// Rule attributes that exclude each other (the combinations dbus-daemon's bus/config-parser.c
/// refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// `own`, `own_prefix`, `user`, `group` and message attributes.
    OwnWithMessage,
    /// `send_*` and `receive_*`.
    SendWithReceive,
    /// `send_error` and `send_member`/`send_interface`.
    SendErrorWithMember,
    /// `send_destination` and `send_destination_prefix`.
    DestinationWithPrefix,
    /// `receive_error` and `receive_member`/`receive_interface`.
    ReceiveErrorWithMember,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::UnknownAttribute { element, attr } => write!(
                f,
                "Attribute \"{attr}\" is invalid on <{element}> element in this context"
            ),
            PolicyError::RepeatedAttribute { element, attr } => write!(
                f,
                "Attribute \"{attr}\" repeated twice on the same <{element}> element"
            ),
            PolicyError::PolicySelector => f.write_str(
                "<policy> element must have exactly one of (context|user|group|at_console) attributes",
            ),
            PolicyError::BadContext(c) => write!(
                f,
                "context attribute on <policy> must have the value \"default\" or \"mandatory\", not \"{c}\""
            ),
            PolicyError::BadAtConsole(v) => write!(
                f,
                "Unknown value \"{v}\" for at_console in message bus configuration file"
            ),
            PolicyError::NoAttributes(element) => {
                write!(f, "Element <{element}> must have one or more attributes")
            }
            PolicyError::MemberWithoutInterface(element) => write!(
                f,
                "On element <{element}>, if you specify a member you must specify an interface or a path"
            ),
            PolicyError::Combination { element, conflict } => {
                let what = match conflict {
                    Conflict::OwnWithMessage => {
                        "own, own_prefix, user, group and the message-related attributes cannot be combined"
                    }
                    Conflict::SendWithReceive => "send and receive attributes cannot be combined",
                    Conflict::SendErrorWithMember => {
                        "send_error cannot be combined with send_member or send_interface"
                    }
                    Conflict::DestinationWithPrefix => {
                        "send_destination cannot be combined with send_destination_prefix"
                    }
                    Conflict::ReceiveErrorWithMember => {
                        "receive_error cannot be combined with receive_member or receive_interface"
                    }
                };
                write!(
                    f,
                    "Invalid combination of attributes on element <{element}>: {what}"
                )
            }
            PolicyError::BadMessageType(t) => write!(f, "Bad message type \"{t}\""),
            PolicyError::BroadcastWithDestination(d) => write!(
                f,
                "Rule with send_broadcast=\"true\" and send_destination=\"{d}\" cannot match anything"
            ),
            PolicyError::BadBool { attr, value } => write!(
                f,
                "Bad value \"{value}\" for {attr} attribute, must be true or false"
            ),
            PolicyError::BadFds { attr, value } => write!(
                f,
                "Bad value \"{value}\" for {attr} attribute, must be an integer in range 0 to {MAX_FDS_ATTR}"
            ),
            PolicyError::GlobalRuleScoped(per) => write!(
                f,
                "rule cannot be per-{per} because it has bus-global semantics"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Which connections a `<policy>` block applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyContext {
    /// `context="default"`: everyone, applied first.
    Default,
    /// `context="mandatory"`: everyone, applied last.
    Mandatory,
    /// `user="…"`, resolved to a uid.
    User(u32),
    /// `group="…"`, resolved to a gid.
    Group(u32),
    /// `at_console="true|false"`. sluicebus treats every connection as not at the console.
    AtConsole(bool),
    /// A `user=`/`group=` that names no known account: its rules are checked, then dropped
    /// (dbus-daemon warns and carries on).
    Ignored,
}

/// Parse the attributes of a `<policy>` element. Exactly one of `context`, `user`, `group`,
/// `at_console` must be present.
pub fn parse_policy_context(
    attrs: &[(&str, &str)],
    users: &dyn UserDb,
) -> Result<PolicyContext, PolicyError> {
    let mut context = None;
    let mut user = None;
    let mut group = None;
    let mut at_console = None;
    for &(k, v) in attrs {
        let slot = match k {
            "context" => &mut context,
            "user" => &mut user,
            "group" => &mut group,
            "at_console" => &mut at_console,
            _ => {
                return Err(PolicyError::UnknownAttribute {
                    element: "policy",
                    attr: k.to_owned(),
                })
            }
        };
        if slot.replace(v).is_some() {
            return Err(PolicyError::RepeatedAttribute {
                element: "policy",
                attr: k.to_owned(),
            });
        }
    }
    let n = [context, user, group, at_console]
        .iter()
        .filter(|a| a.is_some())
        .count();
    if n != 1 {
        return Err(PolicyError::PolicySelector);
    }
    if let Some(c) = context {
        return match c {
            "default" => Ok(PolicyContext::Default),
            "mandatory" => Ok(PolicyContext::Mandatory),
            _ => Err(PolicyError::BadContext(c.to_owned())),
        };
    }
    if let Some(u) = user {
        return Ok(match lookup_uid(u, users) {
            Some(uid) => PolicyContext::User(uid),
            None => {
                log::warn!("Unknown username \"{u}\" in message bus configuration file");
                PolicyContext::Ignored
            }
        });
    }
    if let Some(g) = group {
        return Ok(match lookup_gid(g, users) {
            Some(gid) => PolicyContext::Group(gid),
            None => {
                log::warn!("Unknown group \"{g}\" in message bus configuration file");
                PolicyContext::Ignored
            }
        });
    }
    match at_console {
        Some("true") => Ok(PolicyContext::AtConsole(true)),
        Some("false") => Ok(PolicyContext::AtConsole(false)),
        other => Err(PolicyError::BadAtConsole(
            other.unwrap_or_default().to_owned(),
        )),
    }
}

/// Attribute values of one rule element, by name.
#[derive(Default)]
struct RuleAttrs<'a> {
    send_interface: Option<&'a str>,
    send_member: Option<&'a str>,
    send_error: Option<&'a str>,
    send_destination: Option<&'a str>,
    send_destination_prefix: Option<&'a str>,
    send_path: Option<&'a str>,
    send_type: Option<&'a str>,
    send_broadcast: Option<&'a str>,
    send_requested_reply: Option<&'a str>,
    receive_interface: Option<&'a str>,
    receive_member: Option<&'a str>,
    receive_error: Option<&'a str>,
    receive_sender: Option<&'a str>,
    receive_path: Option<&'a str>,
    receive_type: Option<&'a str>,
    receive_requested_reply: Option<&'a str>,
    eavesdrop: Option<&'a str>,
    min_fds: Option<&'a str>,
    max_fds: Option<&'a str>,
    own: Option<&'a str>,
    own_prefix: Option<&'a str>,
    user: Option<&'a str>,
    group: Option<&'a str>,
    log: Option<&'a str>,
}

/// Parse an `<allow>` (`allow` = true) or `<deny>` element's attributes into a rule, rejecting the
/// attribute combinations dbus-daemon rejects. `Ok(None)` means the rule names an unknown user or
/// group and is dropped (with a warning), as dbus-daemon does.
pub fn parse_rule(
    allow: bool,
    attrs: &[(&str, &str)],
    users: &dyn UserDb,
) -> Result<Option<Rule>, PolicyError> {
    let element = if allow { "allow" } else { "deny" };
    let mut a = RuleAttrs::default();
    for &(k, v) in attrs {
        let slot = match k {
            "send_interface" => &mut a.send_interface,
            "send_member" => &mut a.send_member,
            "send_error" => &mut a.send_error,
            "send_destination" => &mut a.send_destination,
            "send_destination_prefix" => &mut a.send_destination_prefix,
            "send_path" => &mut a.send_path,
            "send_type" => &mut a.send_type,
            "send_broadcast" => &mut a.send_broadcast,
            "send_requested_reply" => &mut a.send_requested_reply,
            "receive_interface" => &mut a.receive_interface,
            "receive_member" => &mut a.receive_member,
            "receive_error" => &mut a.receive_error,
            "receive_sender" => &mut a.receive_sender,
            "receive_path" => &mut a.receive_path,
            "receive_type" => &mut a.receive_type,
            "receive_requested_reply" => &mut a.receive_requested_reply,
            "eavesdrop" => &mut a.eavesdrop,
            "min_fds" => &mut a.min_fds,
            "max_fds" => &mut a.max_fds,
            "own" => &mut a.own,
            "own_prefix" => &mut a.own_prefix,
            "user" => &mut a.user,
            "group" => &mut a.group,
            "log" => &mut a.log,
            _ => {
                return Err(PolicyError::UnknownAttribute {
                    element,
                    attr: k.to_owned(),
                })
            }
        };
        if slot.replace(v).is_some() {
            return Err(PolicyError::RepeatedAttribute {
                element,
                attr: k.to_owned(),
            });
        }
    }

    let any_send = a.send_destination.is_some()
        || a.send_destination_prefix.is_some()
        || a.send_broadcast.is_some()
        || a.send_path.is_some()
        || a.send_type.is_some()
        || a.send_interface.is_some()
        || a.send_member.is_some()
        || a.send_error.is_some()
        || a.send_requested_reply.is_some();
    // A bare `eavesdrop` (no send_ attribute) makes a receive rule: `<allow eavesdrop="true"/>`.
    let any_receive = a.receive_sender.is_some()
        || a.receive_path.is_some()
        || a.receive_type.is_some()
        || a.receive_interface.is_some()
        || a.receive_member.is_some()
        || a.receive_error.is_some()
        || a.receive_requested_reply.is_some()
        || (!any_send && a.eavesdrop.is_some());
    let any_message = any_send
        || any_receive
        || a.eavesdrop.is_some()
        || a.min_fds.is_some()
        || a.max_fds.is_some();
    let standalone = [a.own, a.own_prefix, a.user, a.group]
        .iter()
        .filter(|x| x.is_some())
        .count();

    if !(any_send || any_receive || standalone > 0) {
        return Err(PolicyError::NoAttributes(element));
    }
    if (a.send_member.is_some() && a.send_interface.is_none() && a.send_path.is_none())
        || (a.receive_member.is_some() && a.receive_interface.is_none() && a.receive_path.is_none())
    {
        return Err(PolicyError::MemberWithoutInterface(element));
    }
    if usize::from(any_message) + standalone > 1 {
        return Err(PolicyError::Combination {
            element,
            conflict: Conflict::OwnWithMessage,
        });
    }
    if any_send && any_receive {
        return Err(PolicyError::Combination {
            element,
            conflict: Conflict::SendWithReceive,
        });
    }
    if (a.send_member.is_some() || a.send_interface.is_some()) && a.send_error.is_some() {
        return Err(PolicyError::Combination {
            element,
            conflict: Conflict::SendErrorWithMember,
        });
    }
    if a.send_destination.is_some() && a.send_destination_prefix.is_some() {
        return Err(PolicyError::Combination {
            element,
            conflict: Conflict::DestinationWithPrefix,
        });
    }
    if (a.receive_member.is_some() || a.receive_interface.is_some()) && a.receive_error.is_some() {
        return Err(PolicyError::Combination {
            element,
            conflict: Conflict::ReceiveErrorWithMember,
        });
    }

    if any_send || any_receive {
        let (iface, member, error, path, ty, rr) = if any_send {
            (
                a.send_interface,
                a.send_member,
                a.send_error,
                a.send_path,
                a.send_type,
                ("send_requested_reply", a.send_requested_reply),
            )
        } else {
            (
                a.receive_interface,
                a.receive_member,
                a.receive_error,
                a.receive_path,
                a.receive_type,
                ("receive_requested_reply", a.receive_requested_reply),
            )
        };
        let msg_type = match non_wild(ty) {
            None => 0,
            Some("method_call") => METHOD_CALL,
            Some("method_return") => METHOD_RETURN,
            Some("error") => ERROR,
            Some("signal") => SIGNAL,
            Some(other) => return Err(PolicyError::BadMessageType(other.to_owned())),
        };
        let eavesdrop = parse_bool("eavesdrop", a.eavesdrop)?;
        let requested_reply = parse_bool(rr.0, rr.1)?.unwrap_or(allow);
        let broadcast = parse_bool("send_broadcast", a.send_broadcast)?;
        let (name, name_is_prefix) = if any_send {
            match (non_wild(a.send_destination), a.send_destination_prefix) {
                (Some(d), _) => (Some(d), false),
                (None, Some(p)) => (Some(p), true),
                (None, None) => (None, false),
            }
        } else {
            (non_wild(a.receive_sender), false)
        };
        if broadcast == Some(true) && name.is_some() && !name_is_prefix {
            return Err(PolicyError::BroadcastWithDestination(
                name.unwrap_or_default().to_owned(),
            ));
        }
        let max_fds = parse_fds("max_fds", a.max_fds)?.unwrap_or(u32::MAX);
        let min_fds = parse_fds("min_fds", a.min_fds)?.unwrap_or(0);
        let r = MsgRule {
            allow,
            msg_type,
            path: non_wild(path).map(Into::into),
            interface: non_wild(iface).map(Into::into),
            member: non_wild(member).map(Into::into),
            error: non_wild(error).map(Into::into),
            name: name.map(Into::into),
            name_is_prefix,
            broadcast,
            requested_reply,
            eavesdrop: eavesdrop.unwrap_or(false),
            min_fds,
            max_fds,
        };
        return Ok(Some(Rule(if any_send {
            RuleKind::Send(r)
        } else {
            RuleKind::Receive(r)
        })));
    }
    if let Some(o) = a.own {
        return Ok(Some(Rule(RuleKind::Own(OwnRule {
            allow,
            name: non_wild(Some(o)).map(Into::into),
            prefix: false,
        }))));
    }
    if let Some(p) = a.own_prefix {
        return Ok(Some(Rule(RuleKind::Own(OwnRule {
            allow,
            name: Some(p.into()),
            prefix: true,
        }))));
    }
    let (is_group, who) = match (a.user, a.group) {
        (Some(u), _) => (false, u),
        (None, Some(g)) => (true, g),
        // Unreachable: the attribute checks above guarantee one of the four standalone ones.
        (None, None) => return Err(PolicyError::NoAttributes(element)),
    };
    let id = if who == "*" {
        None
    } else {
        let found = if is_group {
            lookup_gid(who, users)
        } else {
            lookup_uid(who, users)
        };
        match found {
            Some(id) => Some(id),
            None => {
                let what = if is_group { "group" } else { "username" };
                log::warn!("Unknown {what} \"{who}\" on element <{element}>");
                return Ok(None);
            }
        }
    };
    Ok(Some(Rule(RuleKind::Connect(ConnectRule {
        allow,
        is_group,
        id,
    }))))
}

/// `*` means "no restriction".
fn non_wild(v: Option<&str>) -> Option<&str> {
    v.filter(|s| *s != "*")
}

fn parse_bool(attr: &'static str, v: Option<&str>) -> Result<Option<bool>, PolicyError> {
    match v {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(PolicyError::BadBool {
            attr,
            value: other.to_owned(),
        }),
    }
}

fn parse_fds(attr: &'static str, v: Option<&str>) -> Result<Option<u32>, PolicyError> {
    let Some(s) = v else { return Ok(None) };
    match s.parse::<u32>() {
        Ok(n) if n <= MAX_FDS_ATTR && !s.starts_with('+') => Ok(Some(n)),
        _ => Err(PolicyError::BadFds {
            attr,
            value: s.to_owned(),
        }),
    }
}

/// The user database the configuration's `user=`/`group=` names are resolved in (the
/// system's, through NSS, outside the bus core).
pub trait UserDb {
    /// The uid of user `name`.
    fn uid_by_name(&self, name: &str) -> Option<u32>;
    /// The gid of group `name`.
    fn gid_by_name(&self, name: &str) -> Option<u32>;
}

/// Resolve a user name (or decimal uid) from the configuration.
fn lookup_uid(name: &str, users: &dyn UserDb) -> Option<u32> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return name.parse().ok();
    }
    users.uid_by_name(name)
}

/// Resolve a group name (or decimal gid) from the configuration.
fn lookup_gid(name: &str, users: &dyn UserDb) -> Option<u32> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return name.parse().ok();
    }
    users.gid_by_name(name)
}

/// Accumulates rules, in file order, while configuration files are parsed.
#[derive(Debug, Clone, Default)]
pub struct PolicyBuilder {
    default: Vec<Rule>,
    mandatory: Vec<Rule>,
    by_uid: Vec<(u32, Vec<Rule>)>,
    by_gid: Vec<(u32, Vec<Rule>)>,
    console_true: Vec<Rule>,
    console_false: Vec<Rule>,
}

impl PolicyBuilder {
    /// Add `rule` (from [`parse_rule`]) under the `<policy>` block described by `ctx`.
    /// `user=`/`group=` connect rules are bus-global and may not appear in per-user or
    /// per-group blocks.
    pub fn add(&mut self, ctx: PolicyContext, rule: Rule) -> Result<(), PolicyError> {
        let global = matches!(rule.0, RuleKind::Connect(_));
        let list = match ctx {
            PolicyContext::Default => &mut self.default,
            PolicyContext::Mandatory => &mut self.mandatory,
            PolicyContext::User(uid) => {
                if global {
                    return Err(PolicyError::GlobalRuleScoped("user"));
                }
                Self::keyed(&mut self.by_uid, uid)
            }
            PolicyContext::Group(gid) => {
                if global {
                    return Err(PolicyError::GlobalRuleScoped("group"));
                }
                Self::keyed(&mut self.by_gid, gid)
            }
            PolicyContext::AtConsole(true) => &mut self.console_true,
            PolicyContext::AtConsole(false) => &mut self.console_false,
            PolicyContext::Ignored => return Ok(()),
        };
        list.push(rule);
        Ok(())
    }

    fn keyed(v: &mut Vec<(u32, Vec<Rule>)>, id: u32) -> &mut Vec<Rule> {
        let idx = match v.iter().position(|(k, _)| *k == id) {
            Some(i) => i,
            None => {
                v.push((id, Vec::new()));
                v.len() - 1
            }
        };
        // idx is in bounds: found by position() or just pushed.
        &mut v[idx].1
    }

    /// Compile the collected rules.
    pub fn build(self) -> Policy {
        let connect: Vec<ConnectRule> = self
            .default
            .iter()
            .chain(self.mandatory.iter())
            .filter_map(|r| match r.0 {
                RuleKind::Connect(c) => Some(c),
                _ => None,
            })
            .collect();
        let needs_groups =
            !self.by_gid.is_empty() || connect.iter().any(|c| c.is_group && c.id.is_some());
        let mut p = Policy {
            default: self.default,
            mandatory: self.mandatory,
            by_uid: self.by_uid.into_iter().collect(),
            by_gid: self.by_gid.into_iter().collect(),
            console_false: self.console_false,
            n_console_true: self.console_true.len(),
            connect,
            needs_groups,
            shared_known_uid: ConnPolicy::default(),
            shared_unknown_uid: ConnPolicy::default(),
            cache: Mutex::new(HashMap::new()),
        };
        p.shared_known_uid = p.compile(Some(0), None, &[]);
        p.shared_unknown_uid = p.compile(None, None, &[]);
        p
    }
}

/// Cache key: whether the uid is known, the uid if it has its own rules, and the gids (in the
/// connection's order) that have rules.
type CacheKey = (bool, Option<u32>, Vec<u32>);

/// The compiled bus policy. `Policy::default()` has no rules, so it denies every message and
/// every name (like a configuration without `<policy>`).
pub struct Policy {
    default: Vec<Rule>,
    mandatory: Vec<Rule>,
    by_uid: HashMap<u32, Vec<Rule>>,
    by_gid: HashMap<u32, Vec<Rule>>,
    /// at_console="false" rules: apply to every connection with a known uid, since sluicebus
    /// never considers a user to be at the console.
    console_false: Vec<Rule>,
    /// at_console="true" rules never apply; only counted for diagnostics.
    n_console_true: usize,
    /// user=/group= rules from default then mandatory blocks.
    connect: Vec<ConnectRule>,
    needs_groups: bool,
    /// Rule list for connections with a known uid and no user/group-specific rules.
    shared_known_uid: ConnPolicy,
    /// Rule list for connections without a uid.
    shared_unknown_uid: ConnPolicy,
    /// Rule lists for connections that have user/group-specific rules.
    cache: Mutex<HashMap<CacheKey, ConnPolicy>>,
}

impl Default for Policy {
    fn default() -> Self {
        PolicyBuilder::default().build()
    }
}

impl Clone for Policy {
    fn clone(&self) -> Self {
        Policy {
            default: self.default.clone(),
            mandatory: self.mandatory.clone(),
            by_uid: self.by_uid.clone(),
            by_gid: self.by_gid.clone(),
            console_false: self.console_false.clone(),
            n_console_true: self.n_console_true,
            connect: self.connect.clone(),
            needs_groups: self.needs_groups,
            shared_known_uid: self.shared_known_uid.clone(),
            shared_unknown_uid: self.shared_unknown_uid.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("default", &self.default.len())
            .field("mandatory", &self.mandatory.len())
            .field("users", &self.by_uid.len())
            .field("groups", &self.by_gid.len())
            .field("at_console_false", &self.console_false.len())
            .field("at_console_true", &self.n_console_true)
            .finish()
    }
}

impl Policy {
    /// Whether [`for_connection`](Self::for_connection) / [`allows_connect`](Self::allows_connect)
    /// need the connection's real group list; when false, pass `&[]` and skip the lookup.
    pub fn needs_groups(&self) -> bool {
        self.needs_groups
    }

    /// The send/receive/own rules for a connection with this identity (`gids` from the
    /// socket's `SO_PEERGROUPS`). Cheap: connections with the same applicable rules share one list.
    pub fn for_connection(&self, uid: Option<u32>, gids: &[u32]) -> ConnPolicy {
        let uid_key = uid.filter(|u| self.by_uid.contains_key(u));
        let mut gid_key: Vec<u32> = Vec::new();
        if !self.by_gid.is_empty() {
            for g in gids {
                if self.by_gid.contains_key(g) && !gid_key.contains(g) {
                    gid_key.push(*g);
                }
            }
        }
        if uid_key.is_none() && gid_key.is_empty() {
            return if uid.is_some() {
                self.shared_known_uid.clone()
            } else {
                self.shared_unknown_uid.clone()
            };
        }
        let key: CacheKey = (uid.is_some(), uid_key, gid_key);
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&key) {
            return c.clone();
        }
        let c = self.compile(uid, key.1, &key.2);
        cache.insert(key, c.clone());
        c
    }

    /// Build the rule list: default, groups, user, at_console="false", mandatory.
    fn compile(&self, uid: Option<u32>, uid_rules: Option<u32>, gids: &[u32]) -> ConnPolicy {
        let mut c = ConnRules::default();
        c.extend(&self.default);
        for g in gids {
            if let Some(l) = self.by_gid.get(g) {
                c.extend(l);
            }
        }
        if uid.is_some() {
            if let Some(l) = uid_rules.and_then(|u| self.by_uid.get(&u)) {
                c.extend(l);
            }
            c.extend(&self.console_false);
        }
        c.extend(&self.mandatory);
        c.finish();
        ConnPolicy(Arc::new(c))
    }

    /// Whether an authenticated connection may stay: the `user=`/`group=` rules of the
    /// default and mandatory blocks, last match wins, starting from "only `daemon_uid`".
    /// A connection without a uid is refused (ANONYMOUS is governed by `<allow_anonymous/>`).
    pub fn allows_connect(&self, uid: Option<u32>, gids: &[u32], daemon_uid: u32) -> bool {
        let Some(uid) = uid else { return false };
        let mut allowed = uid == daemon_uid;
        for r in &self.connect {
            let matches = match r.id {
                None => true,
                Some(id) if r.is_group => gids.contains(&id),
                Some(id) => id == uid,
            };
            if matches {
                allowed = r.allow;
            }
        }
        allowed
    }
}

/// What the policy needs to know about a message.
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgFacts<'a> {
    /// Wire message type (1 method call, 2 method return, 3 error, 4 signal).
    pub msg_type: u8,
    /// INTERFACE header field.
    pub interface: Option<&'a str>,
    /// MEMBER header field.
    pub member: Option<&'a str>,
    /// ERROR_NAME header field.
    pub error_name: Option<&'a str>,
    /// PATH header field.
    pub path: Option<&'a str>,
    /// Whether the message has a DESTINATION field.
    pub has_destination: bool,
    /// Number of fds attached.
    pub n_fds: u32,
    /// For replies (method return / error) to the addressed recipient: the bus had recorded the
    /// call as awaiting this reply. False for eavesdropped copies. Bus-originated replies count as
    /// requested.
    pub requested_reply: bool,
    /// This delivery goes to a connection other than the addressed recipient of a message that
    /// has a DESTINATION (eavesdropping). Only receive rules look at it.
    pub eavesdrop: bool,
}

impl MsgFacts<'_> {
    #[inline]
    fn is_reply(&self) -> bool {
        self.msg_type == METHOD_RETURN || self.msg_type == ERROR
    }
}

/// The rules that apply to one connection, in application order.
#[derive(Debug, Default)]
struct ConnRules {
    send: Vec<MsgRule>,
    receive: Vec<MsgRule>,
    own: Vec<OwnRule>,
    all_messages: bool,
    everything: bool,
}

impl ConnRules {
    fn extend(&mut self, rules: &[Rule]) {
        for r in rules {
            match &r.0 {
                RuleKind::Send(m) => self.send.push(m.clone()),
                RuleKind::Receive(m) => self.receive.push(m.clone()),
                RuleKind::Own(o) => self.own.push(o.clone()),
                RuleKind::Connect(_) => {}
            }
        }
    }

    /// Precompute the fast-path flags.
    fn finish(&mut self) {
        // An allow rule that matches every message in every situation (any type, no field or
        // name or fd restriction, also unrequested replies and eavesdropped copies), followed only
        // by allow rules, makes the decision constant.
        fn unconditional(r: &MsgRule, receive: bool) -> bool {
            r.allow
                && r.msg_type == 0
                && r.path.is_none()
                && r.interface.is_none()
                && r.member.is_none()
                && r.error.is_none()
                && r.name.is_none()
                && r.broadcast.is_none()
                && r.min_fds == 0
                && r.max_fds == u32::MAX
                && (!r.requested_reply || r.eavesdrop)
                && (!receive || r.eavesdrop)
        }
        fn always(rules: &[MsgRule], receive: bool) -> bool {
            match rules.iter().rposition(|r| unconditional(r, receive)) {
                Some(i) => rules
                    .get(i..)
                    .is_some_and(|tail| tail.iter().all(|r| r.allow)),
                None => false,
            }
        }
        let own_all = match self.own.iter().rposition(|o| o.allow && o.name.is_none()) {
            Some(i) => self
                .own
                .get(i..)
                .is_some_and(|tail| tail.iter().all(|o| o.allow)),
            None => false,
        };
        self.all_messages = always(&self.send, false) && always(&self.receive, true);
        self.everything = self.all_messages && own_all;
    }
}

/// The compiled rules for one connection; cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct ConnPolicy(Arc<ConnRules>);

/// `name` is `rule` or `rule` followed by `.` and more elements.
#[inline]
fn has_prefix(name: &str, rule: &str) -> bool {
    match name.strip_prefix(rule) {
        Some(rest) => rest.is_empty() || rest.starts_with('.'),
        None => false,
    }
}

#[inline]
fn name_matches(rule: &str, prefix: bool, candidate: &str) -> bool {
    if prefix {
        has_prefix(candidate, rule)
    } else {
        candidate == rule
    }
}

/// A rule field matches when unset, when the message lacks the field, or when equal (dbus-daemon's
/// semantics for path, member and error name).
#[inline]
fn field_matches(rule: &Option<Box<str>>, msg: Option<&str>) -> bool {
    match (rule, msg) {
        (Some(r), Some(m)) => &**r == m,
        _ => true,
    }
}

impl MsgRule {
    /// The checks shared by send and receive rules, after type and eavesdrop filtering.
    #[inline]
    fn matches_common(&self, m: &MsgFacts) -> bool {
        if self.msg_type != 0 && self.msg_type != m.msg_type {
            return false;
        }
        if m.is_reply() {
            // Allow rules cover only requested replies unless requested_reply="false" or
            // eavesdrop="true"; deny rules cover only unrequested ones unless
            // requested_reply="true".
            if self.allow && !m.requested_reply && self.requested_reply && !self.eavesdrop {
                return false;
            }
            if !self.allow && m.requested_reply && !self.requested_reply {
                return false;
            }
        }
        if !field_matches(&self.path, m.path) {
            return false;
        }
        if let Some(i) = &self.interface {
            // Without INTERFACE, allow rules do not match but deny rules do.
            match m.interface {
                None if self.allow => return false,
                Some(mi) if mi != &**i => return false,
                _ => {}
            }
        }
        if !field_matches(&self.member, m.member) || !field_matches(&self.error, m.error_name) {
            return false;
        }
        m.n_fds >= self.min_fds && m.n_fds <= self.max_fds
    }
}

/// Whether send rule `r` applies to `m` (see [`ConnPolicy::can_send`]).
#[inline]
fn send_rule_applies(
    r: &MsgRule,
    m: &MsgFacts,
    receiver_names: &[&str],
    destination_field: Option<&str>,
) -> bool {
    let is_broadcast = !m.has_destination && m.msg_type == SIGNAL;
    if r.broadcast.is_some_and(|b| b != is_broadcast) || !r.matches_common(m) {
        return false;
    }
    match &r.name {
        None => true,
        Some(n) if receiver_names.is_empty() => {
            destination_field.is_some_and(|d| name_matches(n, r.name_is_prefix, d))
        }
        Some(n) => receiver_names
            .iter()
            .any(|c| name_matches(n, r.name_is_prefix, c)),
    }
}

/// Whether receive rule `r` applies to `m` (see [`ConnPolicy::can_receive`]).
#[inline]
fn receive_rule_applies(r: &MsgRule, m: &MsgFacts, sender_names: &[&str]) -> bool {
    // eavesdrop="true" lets allow rules cover eavesdropped copies and restricts deny
    // rules to them.
    if m.eavesdrop && r.allow && !r.eavesdrop {
        return false;
    }
    if !m.eavesdrop && !r.allow && r.eavesdrop {
        return false;
    }
    if !r.matches_common(m) {
        return false;
    }
    match &r.name {
        None => true,
        Some(n) => sender_names
            .iter()
            .any(|c| name_matches(n, r.name_is_prefix, c)),
    }
}

impl ConnPolicy {
    /// May this connection send `m` to a receiver owning `receiver_names` (its unique name plus
    /// every well-known name it owns or is queued for; `["org.freedesktop.DBus"]` for the driver)?
    /// If `receiver_names` is empty (receiver not known yet, e.g. before activation), name rules
    /// are compared with `destination_field` instead. Bus-originated messages skip this check.
    pub fn can_send(
        &self,
        m: &MsgFacts,
        receiver_names: &[&str],
        destination_field: Option<&str>,
    ) -> bool {
        self.0
            .send
            .iter()
            .rev()
            .find(|r| send_rule_applies(r, m, receiver_names, destination_field))
            .is_some_and(|r| r.allow)
    }

    /// How many send rules apply to `m` (the arguments are those of [`ConnPolicy::can_send`]):
    /// dbus-daemon's "N matched rules" in a refusal. Only counted for a refusal.
    pub fn send_rules_matched(
        &self,
        m: &MsgFacts,
        receiver_names: &[&str],
        destination_field: Option<&str>,
    ) -> usize {
        self.0
            .send
            .iter()
            .filter(|r| send_rule_applies(r, m, receiver_names, destination_field))
            .count()
    }

    /// May this connection receive `m` from a sender owning `sender_names` (its unique name plus
    /// owned/queued names; `["org.freedesktop.DBus"]` for bus-originated messages)?
    pub fn can_receive(&self, m: &MsgFacts, sender_names: &[&str]) -> bool {
        self.0
            .receive
            .iter()
            .rev()
            .find(|r| receive_rule_applies(r, m, sender_names))
            .is_some_and(|r| r.allow)
    }

    /// How many receive rules apply to `m` (see [`ConnPolicy::send_rules_matched`]).
    pub fn receive_rules_matched(&self, m: &MsgFacts, sender_names: &[&str]) -> usize {
        self.0
            .receive
            .iter()
            .filter(|r| receive_rule_applies(r, m, sender_names))
            .count()
    }

    /// May this connection own (RequestName) `name`?
    pub fn can_own(&self, name: &str) -> bool {
        for r in self.0.own.iter().rev() {
            let hit = match &r.name {
                None => true,
                Some(n) => name_matches(n, r.prefix, name),
            };
            if hit {
                return r.allow;
            }
        }
        false
    }

    /// True when `can_send`, `can_receive` and `can_own` return true for every input (e.g.
    /// session.conf), so callers may skip the checks entirely.
    pub fn allows_everything(&self) -> bool {
        self.0.everything
    }

    /// True when `can_send` and `can_receive` return true for every message (name ownership may
    /// still be restricted): the routing hot path may skip message checks.
    pub fn allows_all_messages(&self) -> bool {
        self.0.all_messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parsers with the system's user database (the tests name root).
    fn parse_policy_context(attrs: &[(&str, &str)]) -> Result<PolicyContext, PolicyError> {
        super::parse_policy_context(attrs, &crate::userdb::Nss)
    }

    fn parse_rule(allow: bool, attrs: &[(&str, &str)]) -> Result<Option<Rule>, PolicyError> {
        super::parse_rule(allow, attrs, &crate::userdb::Nss)
    }

    fn rule(allow: bool, attrs: &[(&str, &str)]) -> Rule {
        parse_rule(allow, attrs).unwrap().unwrap()
    }

    type Attrs<'a> = &'a [(&'a str, &'a str)];

    fn build(rules: &[(PolicyContext, bool, Attrs)]) -> Policy {
        let mut b = PolicyBuilder::default();
        for (ctx, allow, attrs) in rules {
            b.add(*ctx, rule(*allow, attrs)).unwrap();
        }
        b.build()
    }

    fn call<'a>(iface: Option<&'a str>, member: &'a str) -> MsgFacts<'a> {
        MsgFacts {
            msg_type: METHOD_CALL,
            interface: iface,
            member: Some(member),
            path: Some("/"),
            has_destination: true,
            ..Default::default()
        }
    }

    use PolicyContext::{AtConsole, Group, Ignored, Mandatory, User};
    const DEF: PolicyContext = PolicyContext::Default;

    #[test]
    fn empty_policy_denies() {
        let p = Policy::default();
        let c = p.for_connection(Some(1000), &[]);
        assert!(!c.can_send(&call(Some("a.b"), "M"), &[":1.1"], Some(":1.1")));
        assert!(!c.can_receive(&call(Some("a.b"), "M"), &[":1.1"]));
        assert!(!c.can_own("a.b"));
        assert!(!c.allows_everything());
        assert!(!c.allows_all_messages());
        assert!(p.allows_connect(Some(1000), &[], 1000));
        assert!(!p.allows_connect(Some(1001), &[], 1000));
        assert!(!p.allows_connect(None, &[], 1000));
        assert!(!ConnPolicy::default().can_own("x"));
    }

    #[test]
    fn session_policy_allows_everything() {
        let p = build(&[
            (
                DEF,
                true,
                &[("send_destination", "*"), ("eavesdrop", "true")],
            ),
            (DEF, true, &[("eavesdrop", "true")]),
            (DEF, true, &[("own", "*")]),
        ]);
        let c = p.for_connection(Some(1000), &[]);
        assert!(c.allows_everything());
        assert!(c.allows_all_messages());
        let reply = MsgFacts {
            msg_type: METHOD_RETURN,
            has_destination: true,
            ..Default::default()
        };
        assert!(c.can_send(&reply, &[":1.2"], Some(":1.2")));
        let eav = MsgFacts {
            eavesdrop: true,
            ..reply
        };
        assert!(c.can_receive(&eav, &[":1.2"]));
        assert!(c.can_own("com.example.X"));
        // Same list shared for every uid without specific rules.
        let d = p.for_connection(Some(5), &[7]);
        assert!(Arc::ptr_eq(&c.0, &d.0));
    }

    #[test]
    fn allows_everything_false_with_later_deny_or_restricted_allow() {
        let p = build(&[
            (
                DEF,
                true,
                &[("send_destination", "*"), ("eavesdrop", "true")],
            ),
            (DEF, true, &[("eavesdrop", "true")]),
            (DEF, true, &[("own", "*")]),
            (DEF, false, &[("send_interface", "com.example.No")]),
        ]);
        assert!(!p.for_connection(Some(1), &[]).allows_all_messages());
        // forbidding.conf-style: plain allows (no eavesdrop) are not unconditional.
        let p = build(&[
            (DEF, true, &[("send_destination", "*")]),
            (DEF, true, &[("receive_sender", "*")]),
            (DEF, true, &[("own", "*")]),
        ]);
        let c = p.for_connection(Some(1), &[]);
        assert!(!c.allows_all_messages());
        let unreq = MsgFacts {
            msg_type: METHOD_RETURN,
            has_destination: true,
            ..Default::default()
        };
        assert!(!c.can_send(&unreq, &[":1.1"], None));
        let req = MsgFacts {
            requested_reply: true,
            ..unreq
        };
        assert!(c.can_send(&req, &[":1.1"], None));
        // Own restricted: messages all allowed but not everything.
        let p = build(&[
            (
                DEF,
                true,
                &[("send_destination", "*"), ("eavesdrop", "true")],
            ),
            (DEF, true, &[("eavesdrop", "true")]),
            (DEF, false, &[("own", "*")]),
            (DEF, true, &[("own_prefix", "org.ok")]),
        ]);
        let c = p.for_connection(Some(1), &[]);
        assert!(c.allows_all_messages());
        assert!(!c.allows_everything());
    }

    #[test]
    fn interface_absent_semantics() {
        let p = build(&[(DEF, true, &[("send_interface", "a.b")])]);
        let c = p.for_connection(Some(1), &[]);
        assert!(c.can_send(&call(Some("a.b"), "M"), &[":1.1"], None));
        assert!(!c.can_send(&call(None, "M"), &[":1.1"], None));
        let p = build(&[
            (DEF, true, &[("send_destination", "*")]),
            (DEF, false, &[("send_interface", "a.b")]),
        ]);
        let c = p.for_connection(Some(1), &[]);
        assert!(
            !c.can_send(&call(None, "M"), &[":1.1"], None),
            "deny matches without interface"
        );
        assert!(!c.can_send(&call(Some("a.b"), "M"), &[":1.1"], None));
        assert!(c.can_send(&call(Some("a.c"), "M"), &[":1.1"], None));
    }

    #[test]
    fn member_path_error_match_when_absent() {
        let p = build(&[
            (DEF, true, &[("send_destination", "*")]),
            (
                DEF,
                false,
                &[("send_path", "/x"), ("send_member", "Reboot")],
            ),
        ]);
        let c = p.for_connection(Some(1), &[]);
        let mut m = call(Some("a.b"), "Reboot");
        m.path = Some("/x");
        assert!(!c.can_send(&m, &[":1.1"], None));
        m.member = Some("Other");
        assert!(c.can_send(&m, &[":1.1"], None));
        m.path = Some("/y");
        m.member = Some("Reboot");
        assert!(c.can_send(&m, &[":1.1"], None));
    }

    #[test]
    fn requested_reply_rules() {
        // system.conf shape.
        let p = build(&[
            (DEF, false, &[("send_type", "method_call")]),
            (DEF, true, &[("send_type", "signal")]),
            (
                DEF,
                true,
                &[
                    ("send_requested_reply", "true"),
                    ("send_type", "method_return"),
                ],
            ),
            (
                DEF,
                true,
                &[("send_requested_reply", "true"), ("send_type", "error")],
            ),
        ]);
        let c = p.for_connection(Some(1), &[]);
        let ret = MsgFacts {
            msg_type: METHOD_RETURN,
            has_destination: true,
            ..Default::default()
        };
        assert!(!c.can_send(&ret, &[":1.5"], None));
        assert!(c.can_send(
            &MsgFacts {
                requested_reply: true,
                ..ret
            },
            &[":1.5"],
            None
        ));
        let err = MsgFacts {
            msg_type: ERROR,
            error_name: Some("x.Y"),
            ..ret
        };
        assert!(!c.can_send(&err, &[":1.5"], None));
        assert!(c.can_send(
            &MsgFacts {
                requested_reply: true,
                ..err
            },
            &[":1.5"],
            None
        ));
        // Deny with default requested_reply=false does not hit requested replies.
        let p = build(&[
            (
                DEF,
                true,
                &[
                    ("send_requested_reply", "false"),
                    ("send_type", "method_return"),
                ],
            ),
            (DEF, false, &[("send_type", "method_return")]),
        ]);
        let c = p.for_connection(Some(1), &[]);
        assert!(!c.can_send(&ret, &[":1.5"], None));
        assert!(c.can_send(
            &MsgFacts {
                requested_reply: true,
                ..ret
            },
            &[":1.5"],
            None
        ));
        let p = build(&[
            (
                DEF,
                true,
                &[
                    ("send_requested_reply", "false"),
                    ("send_type", "method_return"),
                ],
            ),
            (
                DEF,
                false,
                &[
                    ("send_type", "method_return"),
                    ("send_requested_reply", "true"),
                ],
            ),
        ]);
        let c = p.for_connection(Some(1), &[]);
        assert!(!c.can_send(
            &MsgFacts {
                requested_reply: true,
                ..ret
            },
            &[":1.5"],
            None
        ));
    }

    #[test]
    fn eavesdrop_receive_rules() {
        let p = build(&[(DEF, true, &[("receive_type", "signal")])]);
        let c = p.for_connection(Some(1), &[]);
        let sig = MsgFacts {
            msg_type: SIGNAL,
            has_destination: true,
            ..Default::default()
        };
        assert!(c.can_receive(&sig, &[":1.1"]));
        assert!(!c.can_receive(
            &MsgFacts {
                eavesdrop: true,
                ..sig
            },
            &[":1.1"]
        ));
        let p = build(&[
            (DEF, true, &[("eavesdrop", "true")]),
            (
                DEF,
                false,
                &[("receive_interface", "x.Y"), ("eavesdrop", "true")],
            ),
        ]);
        let c = p.for_connection(Some(1), &[]);
        let s2 = MsgFacts {
            interface: Some("x.Y"),
            ..sig
        };
        assert!(
            c.can_receive(&s2, &[":1.1"]),
            "deny eavesdrop=true only hits eavesdropping"
        );
        assert!(!c.can_receive(
            &MsgFacts {
                eavesdrop: true,
                ..s2
            },
            &[":1.1"]
        ));
    }

    #[test]
    fn broadcast_and_fds() {
        let p = build(&[
            (DEF, true, &[("send_destination", "*")]),
            (
                DEF,
                false,
                &[("send_interface", "b.B"), ("send_broadcast", "true")],
            ),
            (
                DEF,
                false,
                &[("send_interface", "u.U"), ("send_broadcast", "false")],
            ),
            (DEF, false, &[("send_path", "/max2"), ("max_fds", "2")]),
            (DEF, false, &[("send_path", "/min4"), ("min_fds", "4")]),
        ]);
        let c = p.for_connection(Some(1), &[]);
        let bc = MsgFacts {
            msg_type: SIGNAL,
            interface: Some("b.B"),
            member: Some("S"),
            path: Some("/"),
            ..Default::default()
        };
        assert!(!c.can_send(&bc, &[], None));
        assert!(c.can_send(
            &MsgFacts {
                has_destination: true,
                ..bc
            },
            &[":1.1"],
            Some(":1.1")
        ));
        let uc = MsgFacts {
            interface: Some("u.U"),
            ..bc
        };
        assert!(c.can_send(&uc, &[], None));
        assert!(!c.can_send(
            &MsgFacts {
                has_destination: true,
                ..uc
            },
            &[":1.1"],
            Some(":1.1")
        ));
        // A method call without destination is not a broadcast.
        let mc = MsgFacts {
            msg_type: METHOD_CALL,
            ..uc
        };
        assert!(!c.can_send(&mc, &[], None));
        let f = MsgFacts {
            path: Some("/max2"),
            interface: Some("z.Z"),
            ..bc
        };
        assert!(!c.can_send(&MsgFacts { n_fds: 2, ..f }, &[], None));
        assert!(c.can_send(&MsgFacts { n_fds: 3, ..f }, &[], None));
        let f = MsgFacts {
            path: Some("/min4"),
            ..f
        };
        assert!(c.can_send(&MsgFacts { n_fds: 3, ..f }, &[], None));
        assert!(!c.can_send(&MsgFacts { n_fds: 4, ..f }, &[], None));
    }

    #[test]
    fn destination_matches_any_owned_name_or_field() {
        let p = build(&[
            (DEF, true, &[("send_destination", "com.example.A")]),
            (DEF, true, &[("send_destination_prefix", "org.p")]),
        ]);
        let c = p.for_connection(Some(1), &[]);
        let m = call(Some("i.I"), "M");
        assert!(c.can_send(&m, &[":1.3", "x.y", "com.example.A"], Some("x.y")));
        assert!(!c.can_send(&m, &[":1.3", "x.y"], Some("com.example.A")));
        assert!(c.can_send(&m, &[], Some("com.example.A")));
        assert!(c.can_send(&m, &[":1.3", "org.p.q"], None));
        assert!(c.can_send(&m, &[":1.3", "org.p"], None));
        assert!(!c.can_send(&m, &[":1.3", "org.pq"], None));
        assert!(!c.can_send(&m, &[], None));
    }

    #[test]
    fn receive_sender_and_own() {
        let p = build(&[
            (DEF, true, &[("receive_sender", "org.S")]),
            (DEF, false, &[("own", "*")]),
            (DEF, true, &[("own_prefix", "org.freedesktop.ManySystems")]),
            (DEF, true, &[("own", "com.x")]),
        ]);
        let c = p.for_connection(Some(1), &[]);
        let m = call(Some("i.I"), "M");
        assert!(c.can_receive(&m, &[":1.9", "org.S"]));
        assert!(!c.can_receive(&m, &[":1.9"]));
        for (n, ok) in [
            ("org.freedesktop", false),
            ("org.freedesktop.ManySystem", false),
            ("org.freedesktop.ManySystems", true),
            ("org.freedesktop.ManySystems.foo", true),
            ("org.freedesktop.ManySystems.foo.bar", true),
            ("org.freedesktop.ManySystems2", false),
            ("org.freedesktop.ManySystems2.foo", false),
            ("com.x", true),
            ("com.x.y", false),
        ] {
            assert_eq!(c.can_own(n), ok, "{n}");
        }
    }

    #[test]
    fn per_user_group_console_mandatory_order() {
        let p = build(&[
            (DEF, false, &[("own", "*")]),
            (Group(50), true, &[("own", "g.N")]),
            (User(7), false, &[("own", "g.N")]),
            (User(7), true, &[("own", "u.N")]),
            (AtConsole(true), true, &[("own", "c.N")]),
            (AtConsole(false), true, &[("own", "nc.N")]),
            (Mandatory, false, &[("own", "u.N")]),
        ]);
        assert!(p.needs_groups());
        let g = p.for_connection(Some(8), &[50]);
        assert!(g.can_own("g.N"));
        assert!(!g.can_own("u.N"));
        assert!(g.can_own("nc.N"));
        assert!(!g.can_own("c.N"));
        let u = p.for_connection(Some(7), &[50]);
        assert!(!u.can_own("g.N"), "user rules come after group rules");
        assert!(!u.can_own("u.N"), "mandatory comes last");
        let anon = p.for_connection(None, &[]);
        assert!(!anon.can_own("nc.N"), "at_console rules need a uid");
        // Cached: same Arc for the same key.
        let u2 = p.for_connection(Some(7), &[50, 50]);
        assert!(Arc::ptr_eq(&u.0, &u2.0));
        let cloned = p.clone();
        assert!(!cloned.for_connection(Some(7), &[50]).can_own("u.N"));
    }

    #[test]
    fn error_texts_are_dbus_daemons() {
        let rule_err =
            |allow, attrs: &[(&str, &str)]| parse_rule(allow, attrs).unwrap_err().to_string();
        assert_eq!(
            rule_err(true, &[("bogus", "x")]),
            "Attribute \"bogus\" is invalid on <allow> element in this context"
        );
        assert_eq!(
            rule_err(false, &[("own", "a"), ("own", "b")]),
            "Attribute \"own\" repeated twice on the same <deny> element"
        );
        assert_eq!(
            rule_err(true, &[]),
            "Element <allow> must have one or more attributes"
        );
        assert_eq!(
            rule_err(true, &[("send_member", "M")]),
            "On element <allow>, if you specify a member you must specify an interface or a path"
        );
        assert_eq!(
            rule_err(true, &[("own", "a"), ("send_path", "/")]),
            "Invalid combination of attributes on element <allow>: own, own_prefix, user, group and the message-related attributes cannot be combined"
        );
        assert_eq!(
            rule_err(true, &[("send_path", "/"), ("receive_path", "/")]),
            "Invalid combination of attributes on element <allow>: send and receive attributes cannot be combined"
        );
        assert_eq!(
            rule_err(true, &[("send_type", "bogus")]),
            "Bad message type \"bogus\""
        );
        assert_eq!(
            rule_err(
                true,
                &[("send_broadcast", "true"), ("send_destination", "a.b")]
            ),
            "Rule with send_broadcast=\"true\" and send_destination=\"a.b\" cannot match anything"
        );
        assert_eq!(
            rule_err(true, &[("send_path", "/"), ("eavesdrop", "maybe")]),
            "Bad value \"maybe\" for eavesdrop attribute, must be true or false"
        );
        assert_eq!(
            rule_err(true, &[("send_path", "/"), ("max_fds", "-1")]),
            format!("Bad value \"-1\" for max_fds attribute, must be an integer in range 0 to {MAX_FDS_ATTR}")
        );
        let ctx_err = |attrs: &[(&str, &str)]| parse_policy_context(attrs).unwrap_err().to_string();
        assert_eq!(
            ctx_err(&[]),
            "<policy> element must have exactly one of (context|user|group|at_console) attributes"
        );
        assert_eq!(
            ctx_err(&[("context", "x")]),
            "context attribute on <policy> must have the value \"default\" or \"mandatory\", not \"x\""
        );
        assert_eq!(
            ctx_err(&[("at_console", "x")]),
            "Unknown value \"x\" for at_console in message bus configuration file"
        );
        let mut b = PolicyBuilder::default();
        assert_eq!(
            b.add(User(0), rule(true, &[("user", "*")]))
                .unwrap_err()
                .to_string(),
            "rule cannot be per-user because it has bus-global semantics"
        );
    }

    #[test]
    fn connect_rules() {
        let p = build(&[
            (DEF, true, &[("user", "*")]),
            (Mandatory, false, &[("user", "4242")]),
            (DEF, false, &[("group", "99")]),
        ]);
        assert!(p.allows_connect(Some(1000), &[], 0));
        assert!(!p.allows_connect(Some(1000), &[99], 0), "group deny");
        assert!(
            !p.allows_connect(Some(4242), &[], 4242),
            "mandatory deny wins"
        );
        assert!(!p.allows_connect(None, &[], 0));
        let p = build(&[(DEF, true, &[("group", "*")])]);
        assert!(p.allows_connect(Some(5), &[], 0));
        assert!(!p.needs_groups());
        let mut b = PolicyBuilder::default();
        assert!(b.add(User(0), rule(true, &[("user", "*")])).is_err());
        assert!(b.add(Group(0), rule(true, &[("group", "*")])).is_err());
        assert!(b.add(AtConsole(true), rule(true, &[("user", "*")])).is_ok());
        assert!(b.add(Ignored, rule(true, &[("own", "x")])).is_ok());
    }

    #[test]
    fn rule_parse_errors() {
        let bad: &[&[(&str, &str)]] = &[
            &[],
            &[("species", "stoat")],
            &[("log", "true")],
            &[("max_fds", "1")],
            &[("send_member", "Reboot")],
            &[("receive_member", "Reboot")],
            &[("user", "*"), ("own", "com.example.Bees")],
            &[("own", "a"), ("own_prefix", "a")],
            &[("own", "a"), ("eavesdrop", "true")],
            &[
                ("receive_type", "signal"),
                ("send_destination", "com.example.Bees"),
            ],
            &[
                ("send_broadcast", "true"),
                ("send_destination", "com.example.Bees"),
            ],
            &[("send_error", "a.E"), ("send_interface", "a.b")],
            &[
                ("receive_error", "a.E"),
                ("receive_member", "M"),
                ("receive_path", "/"),
            ],
            &[("send_destination", "a"), ("send_destination_prefix", "a")],
            &[("send_type", "bogus")],
            &[("receive_type", "")],
            &[("send_destination", "*"), ("eavesdrop", "maybe")],
            &[("send_destination", "*"), ("send_broadcast", "yes")],
            &[("send_requested_reply", "1")],
            &[("receive_requested_reply", "no")],
            &[("send_path", "/"), ("min_fds", "-1")],
            &[("send_path", "/"), ("max_fds", "x")],
            &[("send_path", "/"), ("max_fds", "33554433")],
            &[("send_path", "/"), ("max_fds", "+3")],
        ];
        for attrs in bad {
            assert!(parse_rule(true, attrs).is_err(), "{attrs:?}");
        }
        // Wildcard destination with broadcast is fine, as is a bare eavesdrop.
        assert!(parse_rule(
            true,
            &[("send_broadcast", "true"), ("send_destination", "*")]
        )
        .is_ok());
        assert!(parse_rule(false, &[("eavesdrop", "true")])
            .unwrap()
            .is_some());
        assert!(parse_rule(
            true,
            &[("send_path", "/"), ("max_fds", "33554432"), ("log", "x")]
        )
        .is_ok());
        // Unknown users/groups drop the rule.
        assert_eq!(
            parse_rule(true, &[("user", "no-such-user-sluicebus")]).unwrap(),
            None
        );
        assert_eq!(
            parse_rule(true, &[("group", "no-such-group-sluicebus")]).unwrap(),
            None
        );
        assert!(parse_rule(true, &[("user", "root")]).unwrap().is_some());
    }

    #[test]
    fn policy_context_parse() {
        assert_eq!(parse_policy_context(&[("context", "default")]), Ok(DEF));
        assert_eq!(
            parse_policy_context(&[("context", "mandatory")]),
            Ok(Mandatory)
        );
        assert_eq!(parse_policy_context(&[("user", "root")]), Ok(User(0)));
        assert_eq!(parse_policy_context(&[("user", "123")]), Ok(User(123)));
        assert_eq!(parse_policy_context(&[("group", "0")]), Ok(Group(0)));
        assert_eq!(
            parse_policy_context(&[("at_console", "true")]),
            Ok(AtConsole(true))
        );
        assert_eq!(
            parse_policy_context(&[("user", "no-such-user-sluicebus")]),
            Ok(Ignored)
        );
        for bad in [
            &[][..],
            &[("hat", "top")][..],
            &[("context", "apropos of nothing")][..],
            &[("at_console", "somewhere in the vicinity")][..],
            &[("user", "root"), ("at_console", "true")][..],
            &[("context", "default"), ("group", "0")][..],
        ] {
            assert!(parse_policy_context(bad).is_err(), "{bad:?}");
        }
    }
}
