//! Per-instance filtering of contained connections: the `Allow` named argument of
//! Containers1.AddServer, compiled into an index, and the questions the bus asks of it.
//!
//! An instance created with `Allow` (even an empty list) is deny-by-default: its
//! connections see, call, own and hear from outside only what a rule grants, as
//! xdg-dbus-proxy's `--filter` mode does, but enforced inside the bus, so a unique name's
//! rights follow the names it owns *now* rather than every name it ever owned.
//!
//! Each rule is `(u flags, s bus_name, o object_path, s interface_and_maybe_member)`:
//! the bus name (or, with [`BUS_NAME_IS_SUBTREE`], the name and its dot-separated
//! descendants; `""` then means every name), the object path (with
//! [`OBJECT_PATH_IS_SUBTREE`] also its descendants), and `""` (any), `iface.*` (any member
//! of the interface) or `iface.Member`, the syntax of xdg-dbus-proxy's `--call` rules.
//! Rules are indexed by bus name, so checking a message looks at the rules for the names
//! involved (a few hash probes per name), not at every rule.

use super::containers::Instance;
use super::error::{BusError, ErrorKind};
use super::{Bus, ConnId, DRIVER_NAME};
use crate::wire::marshal::Value;
use crate::wire::message::Message;
use crate::wire::names::{
    is_valid_interface, is_valid_member, is_valid_object_path, is_valid_well_known_name,
};
use ahash::AHashMap;

/// The rule's bus name also matches its descendants (`a.b` matches `a.b.c`, not `a.bc`).
pub const BUS_NAME_IS_SUBTREE: u32 = 0x01;
/// The rule's object path also matches its descendants (`/` matches every path).
pub const OBJECT_PATH_IS_SUBTREE: u32 = 0x02;
/// The name is visible: listed, its owner known, its NameOwnerChanged delivered.
pub const SEE: u32 = 0x04;
/// Method calls and unicast signals matching the rule may be sent to the name.
pub const CALL_METHODS: u32 = 0x08;
/// Broadcasts matching the rule from the name's owner are delivered.
pub const RECEIVE_BROADCASTS: u32 = 0x10;
/// The name may be requested, released and its queue listed.
pub const OWN: u32 = 0x20;
/// Messages the rule allows may carry unix fds.
pub const SEND_UNIX_FDS: u32 = 0x40;
/// Every defined bit.
const ALL_BITS: u32 = 0x7f;

/// The signature of the `Allow` named argument.
pub const ALLOW_SIGNATURE: &str = "a(usos)";

/// One validated `Allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Flags, with the SEE that CALL_METHODS, RECEIVE_BROADCASTS and OWN imply.
    flags: u32,
    /// Object path.
    path: Box<str>,
    /// Interface (None: any).
    iface: Option<Box<str>>,
    /// Member (None: any member of `iface`).
    member: Option<Box<str>>,
}

impl AllowRule {
    /// Whether a message at `path` with `iface`/`member` falls under this rule.
    fn covers(&self, path: Option<&str>, iface: Option<&str>, member: Option<&str>) -> bool {
        let path_ok = match path {
            None => true,
            Some(p) => {
                p == &*self.path
                    || (self.flags & OBJECT_PATH_IS_SUBTREE != 0 && path_below(p, &self.path))
            }
        };
        let iface_ok = match &self.iface {
            None => true,
            Some(i) => iface == Some(&**i),
        };
        let member_ok = match &self.member {
            None => true,
            Some(m) => member == Some(&**m),
        };
        path_ok && iface_ok && member_ok
    }
}

/// Whether `path` is a descendant of `root` (`/` is the root of everything).
fn path_below(path: &str, root: &str) -> bool {
    if root == "/" {
        return true;
    }
    path.strip_prefix(root)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// An instance's compiled `Allow` list.
#[derive(Debug, Default)]
pub struct Filter {
    rules: Vec<AllowRule>,
    /// Rules naming one bus name exactly.
    exact: AHashMap<Box<str>, Vec<u32>>,
    /// Subtree rules by their root name (`""`: every name).
    subtree: AHashMap<Box<str>, Vec<u32>>,
}

impl Filter {
    /// Parse and validate the `Allow` named argument (`a(usos)`), as
    /// [`BusError`] `InvalidArgs` naming the element and field at fault.
    pub fn from_value(v: &Value) -> Result<Filter, BusError> {
        let invalid = |text: String| BusError::new(ErrorKind::InvalidArgs, text);
        let elements = match v {
            Value::Array(sig, elements) if sig == "(usos)" => elements,
            _ => {
                return Err(invalid(format!(
                    "Named parameter Allow should be of type {ALLOW_SIGNATURE}, not {}",
                    v.signature()
                )))
            }
        };
        let mut filter = Filter::default();
        for (i, e) in elements.iter().enumerate() {
            let Value::Struct(fields) = e else {
                return Err(invalid(format!("Allow[{i}] is not a (usos) struct")));
            };
            let [Value::U32(flags), Value::Str(name), Value::ObjectPath(path), Value::Str(iface)] =
                fields.as_slice()
            else {
                return Err(invalid(format!("Allow[{i}] is not a (usos) struct")));
            };
            let rule = parse_rule(i, *flags, name, path, iface).map_err(invalid)?;
            filter.insert(name, rule);
        }
        Ok(filter)
    }

    fn insert(&mut self, name: &str, rule: AllowRule) {
        let idx = self.rules.len() as u32;
        let subtree = rule.flags & BUS_NAME_IS_SUBTREE != 0;
        self.rules.push(rule);
        let map = if subtree {
            &mut self.subtree
        } else {
            &mut self.exact
        };
        map.entry(Box::from(name)).or_default().push(idx);
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the list is empty (everything outside the instance is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules that apply to well-known name `name`: its exact rules, then the subtree
    /// rules of each of its ancestors (itself included) and of `""`.
    fn rules_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a AllowRule> + 'a {
        let exact = self.exact.get(name).into_iter().flatten();
        let ancestors = std::iter::successors(Some(name), |n| n.rfind('.').map(|i| &n[..i]))
            .chain(std::iter::once(""));
        let subtree = ancestors.flat_map(|a| self.subtree.get(a).into_iter().flatten());
        exact
            .chain(subtree)
            .filter_map(|&i| self.rules.get(i as usize))
    }

    /// The union of the flags of every rule for any of `names` (unique names, which rules
    /// never name, are skipped).
    pub fn rights<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> u32 {
        let mut flags = 0;
        for n in names {
            if n.starts_with(':') {
                continue;
            }
            for r in self.rules_for(n) {
                flags |= r.flags;
            }
        }
        flags
    }

    /// Whether some rule for one of `names` grants all of `need` for a message at `path`
    /// with `iface`/`member` (None: the message has no such field).
    pub fn allows<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        need: u32,
        path: Option<&str>,
        iface: Option<&str>,
        member: Option<&str>,
    ) -> bool {
        names.into_iter().any(|n| {
            !n.starts_with(':')
                && self
                    .rules_for(n)
                    .any(|r| r.flags & need == need && r.covers(path, iface, member))
        })
    }
}

/// The unique-name number of `:1.N` (the bus numbers from 1; see `Bus::activate`).
fn unique_serial(name: &str) -> Option<u64> {
    // Only the spelling the bus hands out (`:1.05` or `:1.+5` names nobody).
    super::unique::number(name)?.checked_add(1)
}

/// Validate one element of `Allow`.
fn parse_rule(
    i: usize,
    flags: u32,
    name: &str,
    path: &str,
    iface: &str,
) -> Result<AllowRule, String> {
    if flags & !ALL_BITS != 0 {
        return Err(format!(
            "Allow[{i}]: flags 0x{flags:x} has unknown bits 0x{:x}",
            flags & !ALL_BITS
        ));
    }
    let subtree = flags & BUS_NAME_IS_SUBTREE != 0;
    if !(is_valid_well_known_name(name) || (subtree && name.is_empty())) {
        let why = if name.starts_with(':') {
            "a unique name, which rules cannot name"
        } else {
            "not a valid well-known bus name"
        };
        return Err(format!("Allow[{i}]: bus name \"{name}\" is {why}"));
    }
    if !is_valid_object_path(path) {
        return Err(format!(
            "Allow[{i}]: object path \"{path}\" is not a valid path"
        ));
    }
    let (iface, member) = if iface.is_empty() {
        (None, None)
    } else if let Some(whole) = iface.strip_suffix(".*") {
        if !is_valid_interface(whole) {
            return Err(format!(
                "Allow[{i}]: interface \"{whole}\" is not a valid interface name"
            ));
        }
        (Some(Box::from(whole)), None)
    } else {
        let bad = || {
            format!(
                "Allow[{i}]: interface and member \"{iface}\" must be \"\", \"interface.*\" or \"interface.Member\""
            )
        };
        let (itf, m) = iface.rsplit_once('.').ok_or_else(bad)?;
        if !is_valid_interface(itf) || !is_valid_member(m) {
            return Err(bad());
        }
        (Some(Box::from(itf)), Some(Box::from(m)))
    };
    let mut flags = flags;
    if flags & (CALL_METHODS | RECEIVE_BROADCASTS | OWN) != 0 {
        flags |= SEE;
    }
    Ok(AllowRule {
        flags,
        path: Box::from(path),
        iface,
        member,
    })
}

/// What a filtered connection may do with a unicast message to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Allow,
    /// The destination is invisible: answer as if it did not exist.
    Hidden,
    /// The destination is visible but the message is not allowed: AccessDenied.
    Deny,
}

impl Bus {
    /// The filter of `id`'s instance, when `id` is a contained connection created with
    /// `Allow`.
    fn filter_of(&self, id: ConnId) -> Option<(u64, &Instance, &Filter)> {
        let p = self.peers.get(id)?;
        if !p.filtered {
            return None;
        }
        let n = p.container?;
        let inst = self.containers.instances.get(&n)?;
        Some((n, inst, inst.filter.as_deref()?))
    }

    /// Whether `id` is a filtered contained connection.
    pub(super) fn is_filtered(&self, id: ConnId) -> bool {
        self.peers.get(id).is_some_and(|p| p.filtered)
    }

    /// The well-known names `target` owns now (primary owner), whose rules make its rights.
    fn owned_well_known(&self, target: ConnId) -> impl Iterator<Item = &str> {
        self.names.primary_names(target).iter().map(|n| &**n)
    }

    /// The rights `viewer` (filtered) has over connection `target`: everything for its own
    /// instance, else the union of the rules of `target`'s names, plus SEE for a contact.
    fn rights_over(&self, viewer: ConnId, target: ConnId) -> u32 {
        let Some((n, inst, filter)) = self.filter_of(viewer) else {
            return u32::MAX;
        };
        let Some(t) = self.peers.get(target) else {
            return 0;
        };
        if t.container == Some(n) {
            return u32::MAX;
        }
        let mut r = filter.rights(self.owned_well_known(target));
        if inst.contacts.contains(&t.serial_no) {
            r |= SEE;
        }
        r
    }

    /// Whether `viewer` may see connection `target` (always, unless `viewer` is filtered).
    pub(super) fn sees_conn(&self, viewer: ConnId, target: ConnId) -> bool {
        self.rights_over(viewer, target) & SEE != 0
    }

    /// Whether `viewer` may see the well-known name `name`, owned or not: a rule grants
    /// SEE on it, or its owner belongs to `viewer`'s instance.
    pub(super) fn sees_name(&self, viewer: ConnId, name: &str) -> bool {
        let Some((n, inst, filter)) = self.filter_of(viewer) else {
            return true;
        };
        if name.starts_with(':') {
            if let Some(&t) = self.unique.get(name) {
                return self.sees_conn(viewer, t);
            }
            // Gone already (its NameOwnerChanged): a contact stays visible to the end.
            return unique_serial(name).is_some_and(|s| inst.contacts.contains(&s));
        }
        filter.rights([name]) & SEE != 0
            || self
                .names
                .owner(name)
                .and_then(|o| self.peers.get(o))
                .is_some_and(|o| o.container == Some(n))
    }

    /// [`Bus::resolve`] as `viewer` may know it: None for a name it may not see.
    pub(super) fn resolve_for(&self, viewer: ConnId, name: &str) -> Option<ConnId> {
        let to = self.resolve(name)?;
        if !self.is_filtered(viewer) {
            return Some(to);
        }
        let visible = if name.starts_with(':') {
            self.sees_conn(viewer, to)
        } else {
            self.sees_name(viewer, name)
        };
        visible.then_some(to)
    }

    /// Whether `id` may request, release and list the queue of `name` (always, unless
    /// filtered: then an OWN rule must grant it).
    pub(super) fn may_own(&self, id: ConnId, name: &str) -> bool {
        match self.filter_of(id) {
            None => true,
            Some((_, _, f)) => f.rights([name]) & OWN != 0,
        }
    }

    /// Whether filtered `id` may call (or auto-start) the unowned name `name` with `msg`'s
    /// path, interface and member; always true for unfiltered connections.
    pub(super) fn may_call_name(&self, id: ConnId, name: &str, msg: &Message) -> bool {
        match self.filter_of(id) {
            None => true,
            Some((_, _, f)) => f.allows(
                [name],
                CALL_METHODS,
                msg.path(),
                msg.interface(),
                msg.member(),
            ),
        }
    }

    /// May `from` send method call or unicast signal `msg` (with `n_fds` fds) to `to`?
    /// Unfiltered senders, and messages within one instance, always may; unicast towards a
    /// filtered instance is checked on its sender's side only.
    pub(super) fn call_verdict(
        &self,
        from: ConnId,
        to: ConnId,
        msg: &Message,
        n_fds: usize,
    ) -> Verdict {
        let rights = self.rights_over(from, to);
        if rights == u32::MAX {
            return Verdict::Allow;
        }
        if rights & SEE == 0 {
            return Verdict::Hidden;
        }
        let Some((_, _, f)) = self.filter_of(from) else {
            return Verdict::Allow;
        };
        let need = if n_fds > 0 {
            CALL_METHODS | SEND_UNIX_FDS
        } else {
            CALL_METHODS
        };
        if f.allows(
            self.owned_well_known(to),
            need,
            msg.path(),
            msg.interface(),
            msg.member(),
        ) {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// May filtered `from` attach `n_fds` fds to a requested reply for `to`? Only a rule
    /// for one of `to`'s names with SEND_UNIX_FDS lets fds out of the instance.
    pub(super) fn reply_fds_allowed(&self, from: ConnId, to: ConnId, n_fds: usize) -> bool {
        n_fds == 0 || self.rights_over(from, to) & SEND_UNIX_FDS != 0
    }

    /// Should broadcast `msg` from `sender` reach `receiver`? Filtered receivers hear their
    /// own instance, and outside senders only through a RECEIVE_BROADCASTS rule.
    pub(super) fn broadcast_allowed(
        &self,
        sender: ConnId,
        receiver: ConnId,
        msg: &Message,
    ) -> bool {
        let Some((n, _, f)) = self.filter_of(receiver) else {
            return true;
        };
        if self
            .peers
            .get(sender)
            .is_some_and(|p| p.container == Some(n))
        {
            return true;
        }
        f.allows(
            self.owned_well_known(sender),
            RECEIVE_BROADCASTS,
            msg.path(),
            msg.interface(),
            msg.member(),
        )
    }

    /// Should the driver's broadcast `msg` reach `receiver`? For filtered receivers only
    /// NameOwnerChanged about a name they may see, and what a RECEIVE_BROADCASTS rule for
    /// `org.freedesktop.DBus` lets through.
    pub(super) fn driver_broadcast_allowed(&self, receiver: ConnId, msg: &Message) -> bool {
        let Some((n, _, f)) = self.filter_of(receiver) else {
            return true;
        };
        if msg.member() == Some("NameOwnerChanged") {
            let mut r = crate::wire::marshal::BodyReader::new(msg);
            let (Ok(name), Ok(old), Ok(new)) = (r.str(), r.str(), r.str()) else {
                return false;
            };
            // Whether a unique name is a connection of the receiver's own instance.
            let sibling = |u: &str| {
                self.unique
                    .get(u)
                    .and_then(|&t| self.peers.get(t))
                    .is_some_and(|p| p.container == Some(n))
            };
            // The name alone decides (its owners being visible must not reveal it), except
            // that an instance hears about the names its own connections take and drop.
            return self.sees_name(receiver, name) || sibling(old) || sibling(new);
        }
        f.allows(
            [DRIVER_NAME],
            RECEIVE_BROADCASTS,
            msg.path(),
            msg.interface(),
            msg.member(),
        )
    }

    /// StartServiceByName from `id`: a filtered connection needs CALL_METHODS on the name
    /// (a name it may not see is answered as one no service file provides).
    pub(super) fn check_start_allowed(&self, id: ConnId, name: &str) -> Result<(), BusError> {
        let Some((n, _, f)) = self.filter_of(id) else {
            return Ok(());
        };
        let own_instance = self
            .names
            .owner(name)
            .and_then(|o| self.peers.get(o))
            .is_some_and(|o| o.container == Some(n));
        if own_instance || f.rights([name]) & CALL_METHODS != 0 {
            return Ok(());
        }
        if self.sees_name(id, name) {
            return Err(BusError::new(
                ErrorKind::AccessDenied,
                format!(
                    "Connection {} may not start \"{name}\": no Allow rule of its container grants calling it",
                    self.log_name(id)
                ),
            ));
        }
        Err(BusError::new(
            ErrorKind::ServiceUnknown,
            format!("The name {name} was not provided by any .service files"),
        ))
    }

    /// The AccessDenied a filtered sender gets for a message its rules do not allow.
    pub(super) fn filter_denial(&self, id: ConnId, msg: &Message, dest: &str) -> BusError {
        let who = self.peers.get(id).map_or("", |p| p.sender_name());
        let instance = self.container_path_of(id).map_or("", |p| &**p);
        BusError::new(
            ErrorKind::AccessDenied,
            format!(
                "Connection {who} of container {instance} may not send this message to \"{dest}\" (path \"{}\", interface \"{}\", member \"{}\"): no Allow rule grants it",
                msg.path().unwrap_or("(unset)"),
                msg.interface().unwrap_or("(unset)"),
                msg.member().unwrap_or("(unset)"),
            ),
        )
    }

    /// A filtered connection's reply to `to`: it passes only if it answers a call `id`
    /// received (once), and carries fds only where a rule allows them. A requested reply
    /// that is blocked is answered to its caller with an error, so nobody waits for a
    /// timeout. Returns whether the reply may be delivered.
    pub(super) fn filtered_reply_passes(
        &mut self,
        id: ConnId,
        to: ConnId,
        msg: &Message,
        key: Option<super::replies::ReplyKey>,
        n_fds: usize,
    ) -> bool {
        let Some(key) = key else {
            log::info!(
                "dropping an unrequested reply from contained connection {}",
                self.log_name(id)
            );
            return false;
        };
        if self.reply_fds_allowed(id, to, n_fds) {
            return true;
        }
        self.reply_delivered(to, key);
        if let Some(rs) = msg.reply_serial {
            let err = BusError::new(
                ErrorKind::AccessDenied,
                format!(
                    "The reply from {} carried unix fds, which its container's rules do not allow towards this caller",
                    self.log_name(id)
                ),
            );
            self.reply_error_serial(to, rs, &err);
        }
        false
    }

    /// A message from `from` was delivered to `to`: if `to` is filtered and `from` is
    /// outside its instance, `to`'s instance may see `from` from now on.
    pub(super) fn note_contact(&mut self, from: ConnId, to: ConnId) {
        let Some(tp) = self.peers.get(to) else {
            return;
        };
        if !tp.filtered {
            return;
        }
        let n = tp.container;
        let Some(fp) = self.peers.get(from) else {
            return;
        };
        if fp.container == n || fp.serial_no == 0 {
            return;
        }
        let serial = fp.serial_no;
        if let Some(inst) = n.and_then(|n| self.containers.instances.get_mut(&n)) {
            inst.contacts.insert(serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(flags: u32, name: &str, path: &str, iface: &str) -> Value {
        Value::Struct(vec![
            Value::U32(flags),
            Value::Str(name.into()),
            Value::ObjectPath(path.into()),
            Value::Str(iface.into()),
        ])
    }

    fn allow(rules: Vec<Value>) -> Value {
        Value::Array("(usos)".into(), rules)
    }

    fn compile(rules: Vec<Value>) -> Filter {
        Filter::from_value(&allow(rules)).expect("valid rules")
    }

    #[test]
    fn empty_list_denies_everything() {
        let f = compile(vec![]);
        assert!(f.is_empty());
        assert_eq!(f.rights(["org.a"]), 0);
        assert!(!f.allows(["org.a"], SEE, None, None, None));
    }

    #[test]
    fn implied_see() {
        for bit in [CALL_METHODS, RECEIVE_BROADCASTS, OWN] {
            let f = compile(vec![rule(bit, "org.a", "/", "")]);
            assert_eq!(f.rights(["org.a"]) & SEE, SEE, "0x{bit:x}");
        }
        let f = compile(vec![rule(SEND_UNIX_FDS, "org.a", "/", "")]);
        assert_eq!(f.rights(["org.a"]) & SEE, 0);
    }

    #[test]
    fn name_subtrees_are_dot_separated() {
        let f = compile(vec![rule(SEE | BUS_NAME_IS_SUBTREE, "org.foo", "/", "")]);
        for yes in ["org.foo", "org.foo.bar", "org.foo.bar.baz"] {
            assert_eq!(f.rights([yes]), SEE | BUS_NAME_IS_SUBTREE, "{yes}");
        }
        for no in ["org.foobar", "org", "com.foo"] {
            assert_eq!(f.rights([no]), 0, "{no}");
        }
        let all = compile(vec![rule(SEE | BUS_NAME_IS_SUBTREE, "", "/", "")]);
        assert_ne!(all.rights(["x.y"]), 0);
        assert_eq!(all.rights([":1.5"]), 0, "unique names are never matched");
    }

    #[test]
    fn paths_interfaces_members() {
        let f = compile(vec![
            rule(
                CALL_METHODS | OBJECT_PATH_IS_SUBTREE,
                "org.a",
                "/p",
                "org.a.I.*",
            ),
            rule(CALL_METHODS, "org.a", "/exact", "org.a.J.M"),
        ]);
        let call = |p, i, m| f.allows(["org.a"], CALL_METHODS, Some(p), i, m);
        assert!(call("/p", Some("org.a.I"), Some("X")));
        assert!(call("/p/q", Some("org.a.I"), Some("Y")));
        assert!(!call("/pq", Some("org.a.I"), Some("X")));
        assert!(!call("/p", Some("org.a.J"), Some("X")));
        assert!(
            !call("/p", None, Some("X")),
            "an interface rule needs the interface"
        );
        assert!(call("/exact", Some("org.a.J"), Some("M")));
        assert!(!call("/exact/x", Some("org.a.J"), Some("M")));
        assert!(!call("/exact", Some("org.a.J"), Some("N")));
        let any = compile(vec![rule(
            CALL_METHODS | OBJECT_PATH_IS_SUBTREE,
            "org.a",
            "/",
            "",
        )]);
        assert!(any.allows(["org.a"], CALL_METHODS, Some("/x/y"), None, Some("Z")));
        assert!(!any.allows(
            ["org.a"],
            CALL_METHODS | SEND_UNIX_FDS,
            Some("/"),
            None,
            None
        ));
    }

    #[test]
    fn contacts_know_unique_names_only_as_the_bus_spells_them() {
        assert_eq!(unique_serial(":1.5"), Some(6));
        assert_eq!(unique_serial(":1.0"), Some(1));
        for odd in [":1.05", ":1.+5", ":1.", ":1.5x", ":2.5", "org.example"] {
            assert_eq!(unique_serial(odd), None, "{odd}");
        }
    }

    #[test]
    fn bare_interface_is_interface_plus_member() {
        // As in xdg-dbus-proxy: "org.example.Iface" is interface org.example, member Iface.
        let f = compile(vec![rule(CALL_METHODS, "org.a", "/", "org.example.Iface")]);
        assert!(f.allows(
            ["org.a"],
            CALL_METHODS,
            Some("/"),
            Some("org.example"),
            Some("Iface")
        ));
        assert!(!f.allows(
            ["org.a"],
            CALL_METHODS,
            Some("/"),
            Some("org.example.Iface"),
            Some("X")
        ));
    }

    #[test]
    fn invalid_rules_name_element_and_field() {
        let cases: Vec<(Value, &str)> = vec![
            (rule(0x80, "org.a", "/", ""), "flags 0x80"),
            (rule(0xffff_ffff, "org.a", "/", ""), "unknown bits"),
            (rule(SEE, ":1.5", "/", ""), "unique name"),
            (rule(SEE, "nope", "/", ""), "bus name \"nope\""),
            (rule(SEE, "", "/", ""), "bus name \"\""),
            (
                rule(SEE, "org.a", "/", "nope"),
                "interface and member \"nope\"",
            ),
            (rule(SEE, "org.a", "/", "org.a.*.*"), "interface"),
            (rule(SEE, "org.a", "/", "org.a.I.9"), "interface and member"),
        ];
        for (r, want) in cases {
            let err =
                Filter::from_value(&allow(vec![rule(SEE, "org.ok", "/", ""), r])).expect_err(want);
            assert_eq!(err.kind, ErrorKind::InvalidArgs);
            assert!(err.text.contains(want), "{} lacks {want}", err.text);
            assert!(err.text.contains("Allow[1]"), "{}", err.text);
        }
        for wrong in [
            Value::Array("u".into(), vec![]),
            Value::Array("(uso)".into(), vec![]),
            Value::Bool(false),
        ] {
            let err = Filter::from_value(&wrong).expect_err("wrong type");
            assert!(err.text.contains("a(usos)"), "{}", err.text);
        }
    }
}
