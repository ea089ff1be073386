//! The command line of `sluicebus-dbus-proxy`, an xdg-dbus-proxy-compatible front end, and
//! its translation into a Containers1 `AddServer` call.
//!
//! xdg-dbus-proxy(1) relays every message between a sandboxed client and the bus and filters
//! it on the way. sluicebus can do the filtering itself: `AddServer` takes the policy as the
//! `Allow` named argument and a listening socket as `Socket`, so the front end only parses
//! the proxy's command line, asks the bus for an instance listening on the proxy's PATH, and
//! relays nothing. Everything here is pure (no system calls), so it is unit-tested; the
//! binary `src/bin/sluicebus-dbus-proxy.rs` does the I/O.
//!
//! # The command line (as documented in xdg-dbus-proxy(1))
//!
//! `[OPTIONS...] ADDRESS PATH [PROXY-OPTIONS...] [ADDRESS PATH [PROXY-OPTIONS...] ...]`
//!
//! * General options, allowed anywhere: `--help`, `--version`, `--fd=FD` (write one byte to
//!   FD when the proxies are ready, stop when FD is closed; the last one given wins),
//!   `--args=FD` (NUL-separated arguments read from FD and parsed as if they stood in place
//!   of the option; may be repeated). Ours, also allowed anywhere and never passed to the
//!   fallback: `--container-type=T`, `--container-name=N`, `--fallback-proxy=PATH`.
//! * An argument not starting with `-` begins an `ADDRESS PATH` pair; the options after it,
//!   up to the next such argument, apply to that pair: `--filter`, `--log`,
//!   `--sloppy-names`, `--see=NAME`, `--talk=NAME`, `--own=NAME`, `--call=NAME=RULE`,
//!   `--broadcast=NAME=RULE`.
//! * `NAME` is a well-known bus name, optionally with a `.*` suffix meaning the name and every
//!   name below it (`org.foo.*` covers `org.foo` and `org.foo.bar`, not `org.foobar`).
//!   Unique names are refused, since policies are given for well-known names.
//! * `RULE` is `[METHOD][@PATH]`: METHOD is empty or `*` (anything), `org.iface.*` (any
//!   member of that interface) or `org.iface.Member`: the last dot-separated element is the
//!   member, so `org.example.Iface` means member `Iface` of interface `org.example`. PATH is
//!   empty (any path), an object path (exactly that path), or `/p/*` (`/p` and every path
//!   below it).
//!
//! xdg-dbus-proxy accepts some rules that can never match (a METHOD without a dot, a
//! malformed path, an invalid name in `--call`); here every name, interface, member and
//! path is validated at startup, because the bus needs well-formed values in `Allow` and a
//! typo is better reported than silently ignored.

use crate::wire::names::{
    is_valid_interface, is_valid_member, is_valid_object_path, is_valid_well_known_name,
};
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// `Allow` flag: the bus name also covers every name below it (`org.foo` covers `org.foo.bar`).
pub const BUS_NAME_IS_SUBTREE: u32 = 0x01;
/// `Allow` flag: the object path also covers every path below it.
pub const OBJECT_PATH_IS_SUBTREE: u32 = 0x02;
/// `Allow` flag: the name is visible (ListNames, GetNameOwner, NameOwnerChanged...).
pub const SEE: u32 = 0x04;
/// `Allow` flag: method calls to the name are allowed.
pub const CALL_METHODS: u32 = 0x08;
/// `Allow` flag: broadcast signals from the name are delivered.
pub const RECEIVE_BROADCASTS: u32 = 0x10;
/// `Allow` flag: the name may be owned (RequestName, ReleaseName, ListQueuedOwners).
pub const OWN: u32 = 0x20;
/// `Allow` flag: file descriptors may be sent along with calls to the name.
pub const SEND_UNIX_FDS: u32 = 0x40;

/// The `Allow` named argument's D-Bus type: an array of these.
pub const ALLOW_SIGNATURE: &str = "a(usos)";

/// Container type used when neither Flatpak nor `--container-type` says otherwise.
pub const DEFAULT_CONTAINER_TYPE: &str = "org.freedesktop.DBus.Proxy";
/// Container type of a Flatpak app (the proxy runs with `/.flatpak-info` mounted).
pub const FLATPAK_CONTAINER_TYPE: &str = "org.flatpak";
/// Where Flatpak puts the app's keyfile inside the proxy's sandbox.
pub const FLATPAK_INFO_PATH: &str = "/.flatpak-info";
/// The environment variable that overrides [`FLATPAK_INFO_PATH`] (for tests).
pub const FLATPAK_INFO_ENV: &str = "SLUICEBUS_FLATPAK_INFO";
/// The environment variable naming the fallback proxy when `--fallback-proxy` is absent.
pub const FALLBACK_ENV: &str = "SLUICEBUS_FALLBACK_PROXY";
/// The fallback proxy when neither `--fallback-proxy` nor [`FALLBACK_ENV`] names one.
pub const DEFAULT_FALLBACK: &str = "/usr/bin/xdg-dbus-proxy";

/// One element of `Allow`: `(u flags, s bus name, o object path, s interface[.member])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Bit set of the `Allow` flags above.
    pub flags: u32,
    /// Well-known bus name (without the `.*` suffix; see [`BUS_NAME_IS_SUBTREE`]).
    pub name: String,
    /// Object path (`/` with [`OBJECT_PATH_IS_SUBTREE`] for "any path").
    pub path: String,
    /// `""` (any), `org.iface.*` (any member of the interface) or `org.iface.Member`.
    pub interface: String,
}

/// One `ADDRESS PATH` pair and its options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxySpec {
    /// The bus to connect to (a D-Bus address).
    pub address: String,
    /// Where the listening socket goes.
    pub path: PathBuf,
    /// `--filter`: apply the rules (without it the instance is unfiltered).
    pub filter: bool,
    /// `--log`: accepted; nothing passes through this process, so there is nothing to log.
    pub log: bool,
    /// `--sloppy-names`: accepted; whether unique names are visible is the bus's policy.
    pub sloppy_names: bool,
    /// The policy options, translated, in command-line order.
    pub allow: Vec<AllowRule>,
}

/// A complete, valid command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// The proxies, in command-line order.
    pub proxies: Vec<ProxySpec>,
    /// `--fd=FD`, the last one given.
    pub sync_fd: Option<RawFd>,
    /// `--container-type=T`.
    pub container_type: Option<String>,
    /// `--container-name=N`.
    pub container_name: Option<String>,
    /// `--fallback-proxy=PATH`.
    pub fallback_proxy: Option<PathBuf>,
    /// The arguments for xdg-dbus-proxy: ours removed, `--args=FD` replaced by what was read.
    pub forwarded: Vec<OsString>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `--help` (handled when reached, like the proxy: errors before it win).
    Help,
    /// `--version` (likewise).
    Version,
    /// Run the proxies.
    Run(Invocation),
}

/// Parse the command line (without argv\[0\]). `read_args` returns the contents of an
/// `--args=FD` descriptor.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    mut read_args: impl FnMut(RawFd) -> Result<Vec<u8>, String>,
) -> Result<Command, String> {
    // A work list, so that arguments read from --args=FD are parsed in place.
    let mut pending: Vec<OsString> = args.into_iter().collect();
    pending.reverse();
    let mut inv = Invocation::default();
    while let Some(arg) = pending.pop() {
        let bytes = arg.as_bytes();
        if bytes.first() != Some(&b'-') {
            // An ADDRESS: its PATH must follow (the proxy refuses a PATH starting with '-').
            let address = text(&arg, "the bus address")?;
            let path = match pending.pop() {
                Some(p) if p.as_bytes().first() != Some(&b'-') => p,
                _ => return Err(format!("no socket path given after the address {address}")),
            };
            inv.forwarded.push(arg.clone());
            inv.forwarded.push(path.clone());
            inv.proxies.push(ProxySpec {
                address,
                path: PathBuf::from(path),
                ..ProxySpec::default()
            });
            continue;
        }
        let s = text(&arg, "an option")?;
        if let Some(done) = generic_option(&s, &mut inv, &mut pending, &mut read_args)? {
            return Ok(done);
        }
    }
    if inv.proxies.is_empty() {
        return Err("no proxies specified (expected ADDRESS PATH)".into());
    }
    Ok(Command::Run(inv))
}

/// An option: general ones anywhere, proxy options after an `ADDRESS PATH` pair. Returns a
/// command when the option ends parsing (`--help`, `--version`).
fn generic_option(
    s: &str,
    inv: &mut Invocation,
    pending: &mut Vec<OsString>,
    read_args: &mut impl FnMut(RawFd) -> Result<Vec<u8>, String>,
) -> Result<Option<Command>, String> {
    match s {
        "--help" => return Ok(Some(Command::Help)),
        "--version" => return Ok(Some(Command::Version)),
        _ => {}
    }
    if let Some(v) = s.strip_prefix("--fd=") {
        inv.sync_fd = Some(parse_fd(v, "--fd")?);
        inv.forwarded.push(s.into());
    } else if let Some(v) = s.strip_prefix("--args=") {
        let fd = parse_fd(v, "--args")?;
        let data = read_args(fd).map_err(|e| format!("cannot read --args={fd}: {e}"))?;
        // NUL-separated; a final argument without a terminating NUL still counts.
        let mut parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
        if parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        for p in parts.into_iter().rev() {
            pending.push(OsString::from_vec(p.to_vec()));
        }
    } else if let Some(v) = s.strip_prefix("--container-type=") {
        if !is_valid_interface(v) {
            return Err(format!(
                "--container-type={v}: the type must have the syntax of an interface name (like org.example.Sandbox)"
            ));
        }
        inv.container_type = Some(v.to_string());
    } else if let Some(v) = s.strip_prefix("--container-name=") {
        inv.container_name = Some(v.to_string());
    } else if let Some(v) = s.strip_prefix("--fallback-proxy=") {
        if v.is_empty() {
            return Err("--fallback-proxy= needs a path".into());
        }
        inv.fallback_proxy = Some(PathBuf::from(v));
    } else if let Some(proxy) = inv.proxies.last_mut() {
        proxy_option(s, proxy)?;
        inv.forwarded.push(s.into());
    } else if is_proxy_option(s) {
        return Err(format!(
            "{s} applies to a proxy and must follow its ADDRESS PATH"
        ));
    } else {
        return Err(format!("unknown argument {s}"));
    }
    Ok(None)
}

/// Whether `s` is one of the options that belong to an `ADDRESS PATH` pair.
fn is_proxy_option(s: &str) -> bool {
    matches!(s, "--filter" | "--log" | "--sloppy-names")
        || ["--see=", "--talk=", "--own=", "--call=", "--broadcast="]
            .iter()
            .any(|p| s.starts_with(p))
}

/// One policy option of xdg-dbus-proxy's command line (`--see=NAME`, `--talk=NAME`,
/// `--own=NAME`, `--call=NAME=RULE`, `--broadcast=NAME=RULE`) as an `Allow` rule; None for
/// any other argument. `sluicebus-container` takes the same options.
pub fn policy_option(s: &str) -> Result<Option<AllowRule>, String> {
    let Some((opt, value)) = s.split_once('=') else {
        return Ok(None);
    };
    Ok(Some(match opt {
        "--see" | "--talk" | "--own" => policy_rule(opt, value)?,
        "--call" | "--broadcast" => method_rule(opt, value)?,
        _ => return Ok(None),
    }))
}

/// One option after `ADDRESS PATH`.
fn proxy_option(s: &str, proxy: &mut ProxySpec) -> Result<(), String> {
    match s {
        "--filter" => proxy.filter = true,
        "--log" => proxy.log = true,
        "--sloppy-names" => proxy.sloppy_names = true,
        _ => match policy_option(s)? {
            Some(rule) => proxy.allow.push(rule),
            None => return Err(format!("unknown argument {s}")),
        },
    }
    Ok(())
}

/// `--see`, `--talk`, `--own`. Each level includes the ones before it (xdg-dbus-proxy(1),
/// "Policy"): SEE makes the name visible; TALK adds calls (with fds) and broadcasts on any
/// path; OWN adds owning the name.
fn policy_rule(opt: &str, value: &str) -> Result<AllowRule, String> {
    let (name, name_flags) = bus_name(opt, value)?;
    const TALK: u32 = SEE | CALL_METHODS | RECEIVE_BROADCASTS | SEND_UNIX_FDS;
    let (flags, path_flags) = match opt {
        "--see" => (SEE, 0),
        "--talk" => (TALK, OBJECT_PATH_IS_SUBTREE),
        _ => (TALK | OWN, OBJECT_PATH_IS_SUBTREE),
    };
    Ok(AllowRule {
        flags: flags | path_flags | name_flags,
        name,
        path: "/".into(),
        interface: String::new(),
    })
}

/// `--call=NAME=RULE`, `--broadcast=NAME=RULE`: the name is visible, and calls to it (or
/// broadcasts from it) matching RULE pass.
fn method_rule(opt: &str, value: &str) -> Result<AllowRule, String> {
    let Some((raw_name, rule)) = value.split_once('=') else {
        return Err(format!(
            "{opt}={value}: expected NAME=RULE (RULE may be empty, meaning anything)"
        ));
    };
    let (name, name_flags) = bus_name(opt, raw_name)?;
    let (method, at_path) = match rule.split_once('@') {
        Some((m, p)) => (m, p),
        None => (rule, ""),
    };
    let bad = |what: &str| format!("{opt}={value}: {what}");
    // PATH: empty is any path; "/p/*" is /p and below; "/*" is every path.
    let (path, path_flags) = if at_path.is_empty() {
        ("/".to_string(), OBJECT_PATH_IS_SUBTREE)
    } else if let Some(prefix) = at_path.strip_suffix("/*") {
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        if !is_valid_object_path(prefix) {
            return Err(bad(&format!(
                "{at_path:?} is not an object path (/a/b, or /a/b/* for a subtree)"
            )));
        }
        (prefix.to_string(), OBJECT_PATH_IS_SUBTREE)
    } else {
        if !is_valid_object_path(at_path) {
            return Err(bad(&format!(
                "{at_path:?} is not an object path (/a/b, or /a/b/* for a subtree)"
            )));
        }
        (at_path.to_string(), 0)
    };
    // METHOD: empty or "*" is anything; "iface.*" any member; "iface.Member" one member.
    let interface = if method.is_empty() || method == "*" {
        String::new()
    } else if let Some(iface) = method.strip_suffix(".*") {
        if !is_valid_interface(iface) {
            return Err(bad(&format!("{iface:?} is not a valid interface name")));
        }
        method.to_string()
    } else {
        let Some((iface, member)) = method.rsplit_once('.') else {
            return Err(bad(&format!(
                "{method:?} is neither *, INTERFACE.* nor INTERFACE.METHOD"
            )));
        };
        if !is_valid_interface(iface) {
            return Err(bad(&format!(
                "{iface:?} (the part of {method:?} before the method name) is not a valid interface name"
            )));
        }
        if !is_valid_member(member) {
            return Err(bad(&format!("{member:?} is not a valid method name")));
        }
        method.to_string()
    };
    let what = if opt == "--call" {
        CALL_METHODS | SEND_UNIX_FDS
    } else {
        RECEIVE_BROADCASTS
    };
    Ok(AllowRule {
        flags: SEE | what | path_flags | name_flags,
        name,
        path,
        interface,
    })
}

/// A NAME argument: a well-known name, optionally with `.*` (→ [`BUS_NAME_IS_SUBTREE`]).
fn bus_name(opt: &str, raw: &str) -> Result<(String, u32), String> {
    let (name, flags) = match raw.strip_suffix(".*") {
        Some(n) => (n, BUS_NAME_IS_SUBTREE),
        None => (raw, 0),
    };
    if name.starts_with(':') {
        return Err(format!(
            "{opt}: {raw:?} is a unique name; rules are given for well-known names"
        ));
    }
    if !is_valid_well_known_name(name) {
        return Err(format!("{opt}: {raw:?} is not a valid bus name"));
    }
    Ok((name.to_string(), flags))
}

/// A descriptor number as `strtol` would take it, but strictly: decimal, not negative.
fn parse_fd(v: &str, opt: &str) -> Result<RawFd, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{opt}={v}: not a file descriptor number"));
    }
    v.parse::<RawFd>()
        .map_err(|_| format!("{opt}={v}: not a file descriptor number"))
}

/// An argument that must be text.
fn text(arg: &OsString, what: &str) -> Result<String, String> {
    arg.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{what} {:?} is not valid UTF-8", arg.to_string_lossy()))
}

/// Who the contained clients are: the `AddServer` identity arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Container technology (interface-name syntax).
    pub container_type: String,
    /// App id (the 2021 API's container name).
    pub app_id: String,
    /// The container manager's id of this run ("" when there is none).
    pub instance_id: String,
    /// Metadata, sent as `a{sv}` of strings, sorted by key.
    pub metadata: Vec<(String, String)>,
}

/// The identity of a Flatpak app from its `/.flatpak-info` keyfile (GKeyFile syntax).
///
/// Type `org.flatpak`, app id `[Application] name`, instance id `[Instance] instance-id`
/// (empty if absent, as with old Flatpak versions). Every other key becomes a metadata entry
/// named `Group.key` (e.g. `Application.runtime`, `Instance.app-path`, `Context.shared`,
/// `Session Bus Policy.org.example.Service`) whose value is the string as written, with the
/// keyfile escapes (`\s \n \t \r \\`) undone. Later duplicates replace earlier ones, as in
/// GKeyFile.
pub fn flatpak_identity(keyfile: &str) -> Result<Identity, String> {
    let mut entries: std::collections::BTreeMap<String, String> = Default::default();
    let mut group: Option<&str> = None;
    for (i, raw) in keyfile.lines().enumerate() {
        let line = raw.trim_start();
        let at = |what: &str| format!("line {}: {what}", i + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(g) = line.strip_prefix('[') {
            let g = g.trim_end();
            let Some(name) = g.strip_suffix(']') else {
                return Err(at("a group header must end with ]"));
            };
            if name.is_empty() || name.contains(['[', ']']) {
                return Err(at("invalid group name"));
            }
            group = Some(name);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(at("not a key=value pair, group or comment"));
        };
        let key = key.trim_end();
        if key.is_empty() {
            return Err(at("empty key"));
        }
        let Some(g) = group else {
            return Err(at("key outside of any group"));
        };
        let value = unescape_keyfile(value.trim_start()).map_err(|e| at(&e))?;
        entries.insert(format!("{g}.{key}"), value);
    }
    let Some(app_id) = entries.remove("Application.name") else {
        return Err("no [Application] name".into());
    };
    if app_id.is_empty() {
        return Err("[Application] name is empty".into());
    }
    let instance_id = entries.remove("Instance.instance-id").unwrap_or_default();
    Ok(Identity {
        container_type: FLATPAK_CONTAINER_TYPE.into(),
        app_id,
        instance_id,
        metadata: entries.into_iter().collect(),
    })
}

/// A GKeyFile string value with its escapes undone.
fn unescape_keyfile(v: &str) -> Result<String, String> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('s') => ' ',
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('\\') => '\\',
            Some(other) => return Err(format!("invalid escape \\{other}")),
            None => return Err("value ends in a lone backslash".into()),
        });
    }
    Ok(out)
}

/// The identity outside Flatpak: `--container-type` (default [`DEFAULT_CONTAINER_TYPE`]),
/// `--container-name` (default: the file name of the proxy's socket PATH), no instance id,
/// no metadata.
pub fn plain_identity(inv: &Invocation, socket_path: &Path) -> Identity {
    let name = inv.container_name.clone().unwrap_or_else(|| {
        socket_path
            .file_name()
            .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
            .unwrap_or_default()
    });
    Identity {
        container_type: inv
            .container_type
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTAINER_TYPE.into()),
        app_id: name,
        instance_id: String::new(),
        metadata: Vec::new(),
    }
}

/// The proxy to exec when the bus cannot do the filtering: `--fallback-proxy`, else
/// `$SLUICEBUS_FALLBACK_PROXY` (if non-empty), else [`DEFAULT_FALLBACK`].
pub fn fallback_path(inv: &Invocation, env: Option<OsString>) -> PathBuf {
    inv.fallback_proxy
        .clone()
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FALLBACK))
}

/// The `AddServer` named arguments the bus must understand for this proxy.
pub fn required_arguments(spec: &ProxySpec) -> Vec<&'static str> {
    let mut v = vec!["Socket"];
    if spec.filter {
        v.push("Allow");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn parse_ok(v: &[&str]) -> Invocation {
        match parse(os(v), |_| Err("no --args here".into())) {
            Ok(Command::Run(inv)) => inv,
            other => panic!("{v:?}: {other:?}"),
        }
    }

    fn parse_err(v: &[&str]) -> String {
        match parse(os(v), |_| Err("no --args here".into())) {
            Err(e) => e,
            other => panic!("{v:?} should fail: {other:?}"),
        }
    }

    /// The single rule of `opt` after one pair.
    fn rule(opt: &str) -> AllowRule {
        let inv = parse_ok(&["unix:path=/b", "/p", "--filter", opt]);
        assert_eq!(inv.proxies[0].allow.len(), 1);
        inv.proxies[0].allow[0].clone()
    }

    fn r(flags: u32, name: &str, path: &str, iface: &str) -> AllowRule {
        AllowRule {
            flags,
            name: name.into(),
            path: path.into(),
            interface: iface.into(),
        }
    }

    const TALK: u32 =
        SEE | CALL_METHODS | RECEIVE_BROADCASTS | OBJECT_PATH_IS_SUBTREE | SEND_UNIX_FDS;

    #[test]
    fn flags_have_the_documented_bits() {
        assert_eq!(
            [
                BUS_NAME_IS_SUBTREE,
                OBJECT_PATH_IS_SUBTREE,
                SEE,
                CALL_METHODS,
                RECEIVE_BROADCASTS,
                OWN,
                SEND_UNIX_FDS
            ],
            [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40]
        );
    }

    #[test]
    fn flatpak_style_command_line() {
        let inv = parse_ok(&[
            "--fd=26",
            "unix:path=/run/user/1000/bus",
            "/run/user/1000/.dbus-proxy/session-bus-proxy",
            "--filter",
            "--own=org.gnome.ghex.*",
            "--talk=ca.desrt.dconf",
            "--call=org.freedesktop.portal.*=*",
            "--broadcast=org.freedesktop.portal.*=@/org/freedesktop/portal/*",
            "unix:path=/run/dbus/system_bus_socket",
            "/run/user/1000/.dbus-proxy/system-bus-proxy",
            "--log",
            "--sloppy-names",
        ]);
        assert_eq!(inv.sync_fd, Some(26));
        assert_eq!(inv.proxies.len(), 2);
        let p = &inv.proxies[0];
        assert_eq!(p.address, "unix:path=/run/user/1000/bus");
        assert_eq!(
            p.path,
            Path::new("/run/user/1000/.dbus-proxy/session-bus-proxy")
        );
        assert!(p.filter && !p.log && !p.sloppy_names);
        assert_eq!(
            p.allow,
            vec![
                r(TALK | OWN | BUS_NAME_IS_SUBTREE, "org.gnome.ghex", "/", ""),
                r(TALK, "ca.desrt.dconf", "/", ""),
                r(
                    SEE | CALL_METHODS
                        | SEND_UNIX_FDS
                        | OBJECT_PATH_IS_SUBTREE
                        | BUS_NAME_IS_SUBTREE,
                    "org.freedesktop.portal",
                    "/",
                    ""
                ),
                r(
                    SEE | RECEIVE_BROADCASTS | OBJECT_PATH_IS_SUBTREE | BUS_NAME_IS_SUBTREE,
                    "org.freedesktop.portal",
                    "/org/freedesktop/portal",
                    ""
                ),
            ]
        );
        let s = &inv.proxies[1];
        assert!(!s.filter && s.log && s.sloppy_names && s.allow.is_empty());
        assert_eq!(
            inv.forwarded,
            os(&[
                "--fd=26",
                "unix:path=/run/user/1000/bus",
                "/run/user/1000/.dbus-proxy/session-bus-proxy",
                "--filter",
                "--own=org.gnome.ghex.*",
                "--talk=ca.desrt.dconf",
                "--call=org.freedesktop.portal.*=*",
                "--broadcast=org.freedesktop.portal.*=@/org/freedesktop/portal/*",
                "unix:path=/run/dbus/system_bus_socket",
                "/run/user/1000/.dbus-proxy/system-bus-proxy",
                "--log",
                "--sloppy-names",
            ])
        );
    }

    /// The accessibility-bus rules Flatpak passes: methods given as INTERFACE.METHOD on exact
    /// paths, on an abstract-socket address.
    #[test]
    fn accessibility_bus_rules() {
        let inv = parse_ok(&[
            "unix:abstract=/tmp/dbus-AbCd,guid=0123",
            "/run/user/1000/.dbus-proxy/a11y-bus-proxy",
            "--filter",
            "--sloppy-names",
            "--call=org.a11y.atspi.Registry=org.a11y.atspi.Socket.Embed@/org/a11y/atspi/accessible/root",
            "--call=org.a11y.atspi.Registry=org.a11y.atspi.Registry.GetRegisteredEvents@/org/a11y/atspi/registry",
        ]);
        let p = &inv.proxies[0];
        assert!(p.filter && p.sloppy_names);
        const CALL: u32 = SEE | CALL_METHODS | SEND_UNIX_FDS;
        assert_eq!(
            p.allow,
            vec![
                r(
                    CALL,
                    "org.a11y.atspi.Registry",
                    "/org/a11y/atspi/accessible/root",
                    "org.a11y.atspi.Socket.Embed"
                ),
                r(
                    CALL,
                    "org.a11y.atspi.Registry",
                    "/org/a11y/atspi/registry",
                    "org.a11y.atspi.Registry.GetRegisteredEvents"
                ),
            ]
        );
    }

    #[test]
    fn policy_levels() {
        assert_eq!(rule("--see=org.a.B"), r(SEE, "org.a.B", "/", ""));
        assert_eq!(rule("--talk=org.a.B"), r(TALK, "org.a.B", "/", ""));
        assert_eq!(rule("--own=org.a.B"), r(TALK | OWN, "org.a.B", "/", ""));
        assert_eq!(
            rule("--see=org.a.*"),
            r(SEE | BUS_NAME_IS_SUBTREE, "org.a", "/", "")
        );
    }

    #[test]
    fn call_and_broadcast_rules() {
        const CALL: u32 = SEE | CALL_METHODS | SEND_UNIX_FDS;
        const BC: u32 = SEE | RECEIVE_BROADCASTS;
        const ANY: u32 = OBJECT_PATH_IS_SUBTREE;
        let cases: &[(&str, AllowRule)] = &[
            ("--call=org.a.B=", r(CALL | ANY, "org.a.B", "/", "")),
            ("--call=org.a.B=*", r(CALL | ANY, "org.a.B", "/", "")),
            ("--call=org.a.B=@", r(CALL | ANY, "org.a.B", "/", "")),
            ("--call=org.a.B=*@/x/y", r(CALL, "org.a.B", "/x/y", "")),
            (
                "--call=org.a.B=@/x/y/*",
                r(CALL | ANY, "org.a.B", "/x/y", ""),
            ),
            ("--call=org.a.B=@/*", r(CALL | ANY, "org.a.B", "/", "")),
            ("--call=org.a.B=@/", r(CALL, "org.a.B", "/", "")),
            (
                "--call=org.a.B=org.a.I.M@/p/*",
                r(CALL | ANY, "org.a.B", "/p", "org.a.I.M"),
            ),
            (
                "--call=org.a.B=org.a.I.*",
                r(CALL | ANY, "org.a.B", "/", "org.a.I.*"),
            ),
            // A bare interface name is interface + member, as in xdg-dbus-proxy.
            (
                "--call=org.a.B=org.example.Iface",
                r(CALL | ANY, "org.a.B", "/", "org.example.Iface"),
            ),
            (
                "--call=org.a.*=org.a.I.M",
                r(CALL | ANY | BUS_NAME_IS_SUBTREE, "org.a", "/", "org.a.I.M"),
            ),
            ("--broadcast=org.a.B=", r(BC | ANY, "org.a.B", "/", "")),
            (
                "--broadcast=org.a.B=org.a.I.Sig@/s",
                r(BC, "org.a.B", "/s", "org.a.I.Sig"),
            ),
            (
                "--broadcast=org.a.*=@/s/*",
                r(BC | ANY | BUS_NAME_IS_SUBTREE, "org.a", "/s", ""),
            ),
        ];
        for (opt, want) in cases {
            assert_eq!(&rule(opt), want, "{opt}");
        }
    }

    #[test]
    fn subtree_names_strip_only_a_final_dot_star() {
        // "org.foo.*" covers org.foo and below; the bus name sent is "org.foo".
        assert_eq!(rule("--talk=org.foo.*").name, "org.foo");
        assert_eq!(
            rule("--talk=org.foo.*").flags & BUS_NAME_IS_SUBTREE,
            BUS_NAME_IS_SUBTREE
        );
        assert_eq!(rule("--talk=org.foobar").flags & BUS_NAME_IS_SUBTREE, 0);
        assert!(parse_err(&["a", "/p", "--talk=org.*"]).contains("not a valid bus name"));
        assert!(parse_err(&["a", "/p", "--talk=org.foo*"]).contains("not a valid bus name"));
        assert!(parse_err(&["a", "/p", "--talk=*"]).contains("not a valid bus name"));
    }

    #[test]
    fn bad_names_and_rules_are_errors() {
        let cases: &[(&str, &str)] = &[
            ("--talk=:1.5", "unique name"),
            ("--own=:1.5.*", "unique name"),
            ("--call=:1.5=*", "unique name"),
            ("--see=", "not a valid bus name"),
            ("--see=org", "not a valid bus name"),
            ("--see=org..a", "not a valid bus name"),
            ("--see=org.1a", "not a valid bus name"),
            ("--call=org.a.b", "expected NAME=RULE"),
            ("--broadcast=org.a.b", "expected NAME=RULE"),
            ("--call=bad=*", "not a valid bus name"),
            ("--call=org.a.b=Method", "neither *"),
            ("--call=org.a.b=*x", "neither *"),
            ("--call=org.a.b=org.I", "not a valid interface name"),
            ("--call=org.a.b=org.a.I.1m", "not a valid method name"),
            ("--call=org.a.b=org.a.I.M-", "not a valid method name"),
            ("--call=bad..x.*=*", "not a valid bus name"),
            ("--call=org.a.b=org.*", "not a valid interface name"),
            ("--call=org.a.b=@p", "not an object path"),
            ("--call=org.a.b=@/p/", "not an object path"),
            ("--call=org.a.b=@/p//q", "not an object path"),
            ("--call=org.a.b=@/p*", "not an object path"),
            ("--broadcast=org.a.b=@/p/*/*", "not an object path"),
            ("--filter=yes", "unknown argument"),
            ("--see", "unknown argument"),
            ("--bogus", "unknown argument"),
        ];
        for (opt, want) in cases {
            let e = parse_err(&["unix:path=/b", "/p", opt]);
            assert!(e.contains(want), "{opt}: {e}");
        }
    }

    #[test]
    fn command_line_shape_errors() {
        assert!(parse_err(&[]).contains("no proxies"));
        assert!(parse_err(&["--fd=3"]).contains("no proxies"));
        assert!(parse_err(&["unix:path=/b"]).contains("no socket path"));
        assert!(parse_err(&["unix:path=/b", "--filter"]).contains("no socket path"));
        assert!(parse_err(&["--filter", "a", "/p"]).contains("must follow its ADDRESS PATH"));
        assert!(parse_err(&["--talk=org.a.b", "a", "/p"]).contains("must follow"));
        assert!(parse_err(&["--bogus", "a", "/p"]).contains("unknown argument --bogus"));
        assert!(parse_err(&["--fd=x", "a", "/p"]).contains("not a file descriptor"));
        assert!(parse_err(&["--fd=-1", "a", "/p"]).contains("not a file descriptor"));
        assert!(parse_err(&["--fd=", "a", "/p"]).contains("not a file descriptor"));
        assert!(parse_err(&["--fd=99999999999", "a", "/p"]).contains("not a file descriptor"));
        assert!(parse_err(&["--args=z", "a", "/p"]).contains("not a file descriptor"));
        assert!(parse_err(&["--args=5", "a", "/p"]).contains("cannot read --args=5"));
        assert!(parse_err(&["a", "/p", "--container-type=notaniface"]).contains("interface name"));
        assert!(parse_err(&["a", "/p", "--fallback-proxy="]).contains("needs a path"));
        let bad = OsString::from_vec(vec![b'a', 0xff]);
        let e = parse(vec![bad, "/p".into()], |_| Ok(vec![])).unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn help_and_version_win_when_reached() {
        assert_eq!(parse(os(&["--help"]), |_| Ok(vec![])), Ok(Command::Help));
        assert_eq!(
            parse(os(&["a", "/p", "--version", "--bogus"]), |_| Ok(vec![])),
            Ok(Command::Version)
        );
        // An error before --help is reported, as the proxy parses in order.
        assert!(parse(os(&["--bogus", "--help"]), |_| Ok(vec![])).is_err());
    }

    #[test]
    fn last_fd_wins_and_generic_options_go_anywhere() {
        let inv = parse_ok(&["--fd=3", "a", "/p", "--fd=7", "--filter"]);
        assert_eq!(inv.sync_fd, Some(7));
        assert!(inv.proxies[0].filter);
    }

    #[test]
    fn args_fd_inserts_in_place() {
        let mut asked = Vec::new();
        let cmd = parse(os(&["--args=4", "--filter", "--args=5"]), |fd| {
            asked.push(fd);
            Ok(match fd {
                4 => b"unix:path=/b\0/p\0--talk=org.a.B\0".to_vec(),
                // No trailing NUL: the last argument still counts.
                5 => b"--own=org.c.D\0--container-name=app".to_vec(),
                _ => return Err("unexpected".into()),
            })
        })
        .unwrap();
        assert_eq!(asked, vec![4, 5]);
        let Command::Run(inv) = cmd else {
            panic!("{cmd:?}")
        };
        let p = &inv.proxies[0];
        assert_eq!(p.address, "unix:path=/b");
        assert!(p.filter);
        assert_eq!(p.allow.len(), 2);
        assert_eq!(p.allow[1].flags & OWN, OWN);
        assert_eq!(inv.container_name.as_deref(), Some("app"));
        // --args is replaced by what it held; our own options are dropped.
        assert_eq!(
            inv.forwarded,
            os(&[
                "unix:path=/b",
                "/p",
                "--talk=org.a.B",
                "--filter",
                "--own=org.c.D"
            ])
        );
    }

    #[test]
    fn args_fd_can_nest_and_be_empty() {
        let cmd = parse(os(&["--args=4", "a", "/p"]), |fd| {
            Ok(match fd {
                4 => b"--args=5\0".to_vec(),
                _ => Vec::new(),
            })
        })
        .unwrap();
        assert!(matches!(cmd, Command::Run(ref i) if i.proxies.len() == 1));
    }

    #[test]
    fn our_options_are_not_forwarded() {
        let inv = parse_ok(&[
            "--container-type=org.example.Sandbox",
            "a",
            "/p",
            "--container-name=n",
            "--fallback-proxy=/opt/xdp",
            "--filter",
        ]);
        assert_eq!(inv.container_type.as_deref(), Some("org.example.Sandbox"));
        assert_eq!(inv.container_name.as_deref(), Some("n"));
        assert_eq!(inv.fallback_proxy, Some(PathBuf::from("/opt/xdp")));
        assert_eq!(inv.forwarded, os(&["a", "/p", "--filter"]));
    }

    #[test]
    fn fallback_choice() {
        let mut inv = parse_ok(&["a", "/p"]);
        assert_eq!(fallback_path(&inv, None), Path::new(DEFAULT_FALLBACK));
        assert_eq!(
            fallback_path(&inv, Some("".into())),
            Path::new(DEFAULT_FALLBACK)
        );
        assert_eq!(fallback_path(&inv, Some("/e".into())), Path::new("/e"));
        inv.fallback_proxy = Some("/o".into());
        assert_eq!(fallback_path(&inv, Some("/e".into())), Path::new("/o"));
    }

    #[test]
    fn required_arguments_depend_on_filter() {
        let inv = parse_ok(&["a", "/p", "b", "/q", "--filter"]);
        assert_eq!(required_arguments(&inv.proxies[0]), vec!["Socket"]);
        assert_eq!(required_arguments(&inv.proxies[1]), vec!["Socket", "Allow"]);
    }

    #[test]
    fn plain_identity_defaults() {
        let inv = parse_ok(&["a", "/run/x/session-bus-proxy"]);
        let id = plain_identity(&inv, &inv.proxies[0].path);
        assert_eq!(id.container_type, DEFAULT_CONTAINER_TYPE);
        assert_eq!(id.app_id, "session-bus-proxy");
        assert_eq!(id.instance_id, "");
        assert!(id.metadata.is_empty());
        let inv = parse_ok(&[
            "--container-type=org.ex.T",
            "--container-name=app",
            "a",
            "/p",
        ]);
        let id = plain_identity(&inv, &inv.proxies[0].path);
        assert_eq!(
            (id.container_type.as_str(), id.app_id.as_str()),
            ("org.ex.T", "app")
        );
    }

    #[test]
    fn flatpak_info_becomes_identity_and_metadata() {
        let info = "\
# comment
[Application]
name=org.example.App
runtime=runtime/org.gnome.Platform/x86_64/45

[Instance]
instance-id = 1234567
app-path=/var/lib/flatpak/app/org.example.App/current/active/files
branch=stable
extra=a\\sb\\nc\\\\d

[Session Bus Policy]
org.example.Other=talk
[Instance]
branch=beta
";
        let id = flatpak_identity(info).unwrap();
        assert_eq!(id.container_type, "org.flatpak");
        assert_eq!(id.app_id, "org.example.App");
        assert_eq!(id.instance_id, "1234567");
        let m: Vec<(&str, &str)> = id
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            m,
            vec![
                (
                    "Application.runtime",
                    "runtime/org.gnome.Platform/x86_64/45"
                ),
                (
                    "Instance.app-path",
                    "/var/lib/flatpak/app/org.example.App/current/active/files"
                ),
                ("Instance.branch", "beta"),
                ("Instance.extra", "a b\nc\\d"),
                ("Session Bus Policy.org.example.Other", "talk"),
            ]
        );
    }

    #[test]
    fn flatpak_info_errors() {
        let cases: &[(&str, &str)] = &[
            ("name=x\n", "outside of any group"),
            ("[Application\nname=x\n", "must end with ]"),
            ("[]\n", "invalid group name"),
            ("[Application]\njunk\n", "line 2: not a key=value"),
            ("[Application]\n=x\n", "empty key"),
            ("[Application]\nname=a\\qb\n", "invalid escape"),
            ("[Application]\nname=a\\\n", "lone backslash"),
            ("[Instance]\ninstance-id=1\n", "no [Application] name"),
            ("[Application]\nname=\n", "name is empty"),
        ];
        for (text, want) in cases {
            let e = flatpak_identity(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // Without an instance id (old Flatpak) the id is empty.
        assert_eq!(
            flatpak_identity("[Application]\nname=a.b\n")
                .unwrap()
                .instance_id,
            ""
        );
    }
}
