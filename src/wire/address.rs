//! D-Bus server addresses (the D-Bus specification, "Server Addresses" and "Transports"):
//! parsing the `<listen>` / `--address` forms, value escaping, and printing the connectable
//! address.
//!
//! Syntax: `transport:key=value,key=value`, several addresses joined by `;`. Values are
//! percent-escaped; every byte outside `[-0-9A-Za-z_/.\*]` must be written as `%xx`.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Longest `unix:path=` / `unix:abstract=` name: `sun_path` is 108 bytes and libdbus keeps
/// room for a terminating NUL (abstract names spend that byte on the leading NUL instead).
pub const MAX_UNIX_NAME_LEN: usize = 107;

/// Address family requested with `family=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `family=ipv4`
    Ipv4,
    /// `family=ipv6`
    Ipv6,
}

impl Family {
    /// The value as written in an address.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// Parse a `family=` value (exact, lower case as libdbus expects).
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "ipv4" => Some(Family::Ipv4),
            "ipv6" => Some(Family::Ipv6),
            _ => None,
        }
    }
}

/// One address the bus should listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `unix:path=P`: a filesystem socket at P.
    UnixPath(PathBuf),
    /// `unix:abstract=N`: a Linux abstract socket (name without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// `unix:dir=D`: a randomly named socket inside D.
    UnixDir(PathBuf),
    /// `unix:tmpdir=D`: like `dir` (dbus 1.14 no longer uses abstract sockets here).
    UnixTmpdir(PathBuf),
    /// `unix:runtime=yes`: `$XDG_RUNTIME_DIR/bus`, resolved when binding.
    UnixRuntime,
    /// `tcp:`; `host` defaults to `localhost`, `port` 0 means "pick one", `bind` is the
    /// address to bind to when it differs from the advertised host (`*` = any).
    Tcp {
        /// Host name or address to advertise (and bind, unless `bind` is set).
        host: String,
        /// Port; 0 lets the kernel choose.
        port: u16,
        /// Restrict name resolution to one family.
        family: Option<Family>,
        /// Address to bind instead of `host`.
        bind: Option<String>,
    },
    /// `nonce-tcp:`: as [`ListenAddress::Tcp`], plus a nonce file clients must prove to read.
    NonceTcp {
        /// Host name or address to advertise (and bind, unless `bind` is set).
        host: String,
        /// Port; 0 lets the kernel choose.
        port: u16,
        /// Restrict name resolution to one family.
        family: Option<Family>,
        /// Address to bind instead of `host`.
        bind: Option<String>,
    },
    /// `systemd:`: the sockets passed by socket activation (`LISTEN_FDS`).
    Systemd,
}

/// Why an address string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// The string holds no address at all (or an empty entry between `;`s).
    Empty,
    /// An entry has no `transport:` prefix.
    MissingColon(String),
    /// A `key=value` pair has no `=` or an empty key.
    BadPair(String),
    /// The same key appears twice in one entry.
    DuplicateKey(String),
    /// A value has a bad `%` escape or a byte that must be escaped.
    BadEscape {
        /// The raw value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The transport is not known at all.
    UnknownTransport(String),
    /// The transport exists but a bus cannot listen on it here (e.g. `launchd`).
    UnsupportedTransport(String),
    /// A key that the transport does not take.
    UnknownKey {
        /// The entry's transport.
        transport: String,
        /// The offending key.
        key: String,
    },
    /// `unix:` needs exactly one of `path`, `abstract`, `dir`, `tmpdir`, `runtime`.
    UnixKind(usize),
    /// `unix:runtime=yes` but `XDG_RUNTIME_DIR` is unset or empty.
    NoRuntimeDir,
    /// A value is not acceptable for its key.
    BadValue {
        /// The key.
        key: String,
        /// The raw value, as written.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Empty => f.write_str("empty D-Bus address"),
            AddressError::MissingColon(e) => {
                write!(
                    f,
                    "D-Bus address {e:?} does not start with a transport and ':'"
                )
            }
            AddressError::BadPair(p) => {
                write!(f, "D-Bus address part {p:?} is not of the form key=value")
            }
            AddressError::DuplicateKey(k) => write!(f, "D-Bus address repeats the key {k:?}"),
            AddressError::BadEscape { value, why } => {
                write!(f, "D-Bus address value {value:?}: {why}")
            }
            AddressError::UnknownTransport(t) => {
                write!(f, "unknown D-Bus address transport {t:?}")
            }
            AddressError::UnsupportedTransport(t) => {
                write!(f, "cannot listen on D-Bus address transport {t:?}")
            }
            AddressError::UnknownKey { transport, key } => {
                write!(
                    f,
                    "D-Bus address transport {transport:?} has no key {key:?}"
                )
            }
            AddressError::UnixKind(n) => write!(
                f,
                "a unix: address needs exactly one of path, abstract, dir, tmpdir or runtime \
                 (found {n})"
            ),
            AddressError::BadValue { key, value, why } => {
                write!(f, "D-Bus address {key}={value:?}: {why}")
            }
            AddressError::NoRuntimeDir => {
                f.write_str("unix:runtime=yes needs XDG_RUNTIME_DIR to be set")
            }
        }
    }
}

impl std::error::Error for AddressError {}

/// Bytes that may appear unescaped in a value.
fn optionally_escaped(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'\\' | b'*' | b'.')
}

/// Escape an address value: bytes outside `[-0-9A-Za-z_/.\*]` become `%xx` (lower-case hex,
/// as libdbus prints them).
pub fn escape(value: &[u8]) -> String {
    let mut s = String::with_capacity(value.len());
    for &b in value {
        if optionally_escaped(b) {
            s.push(char::from(b));
        } else {
            s.push('%');
            super::push_hex(&mut s, b);
        }
    }
    s
}

/// Undo [`escape`]: `%xx` (either case) becomes the byte; any other byte outside the
/// optionally-escaped set is an error, as the specification requires it to be escaped.
pub fn unescape(value: &str) -> Result<Vec<u8>, AddressError> {
    let bad = |why| AddressError::BadEscape {
        value: value.to_string(),
        why,
    };
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        if optionally_escaped(b) {
            out.push(b);
        } else if b == b'%' {
            let (Some(h), Some(l)) = (bytes.next(), bytes.next()) else {
                return Err(bad("'%' is not followed by two hex digits"));
            };
            match (super::hex_val(h), super::hex_val(l)) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(bad("'%' is not followed by two hex digits")),
            }
        } else {
            return Err(bad("contains a character that must be %-escaped"));
        }
    }
    Ok(out)
}

/// One entry's decoded `key=value` pairs, in order.
struct Pairs<'a> {
    transport: &'a str,
    pairs: Vec<(&'a str, Vec<u8>)>,
}

impl Pairs<'_> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Refuse keys outside `allowed`; `guid` is accepted everywhere because printed
    /// addresses carry one and a listener simply makes its own.
    fn only(&self, allowed: &[&str]) -> Result<(), AddressError> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| *k != "guid" && !allowed.contains(k))
        {
            Some((k, _)) => Err(AddressError::UnknownKey {
                transport: self.transport.to_string(),
                key: (*k).to_string(),
            }),
            None => Ok(()),
        }
    }

    fn text(&self, key: &str) -> Result<Option<&str>, AddressError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| bad_value(key, v, "is not UTF-8")),
        }
    }
}

fn bad_value(key: &str, value: &[u8], why: &'static str) -> AddressError {
    AddressError::BadValue {
        key: key.to_string(),
        value: escape(value),
        why,
    }
}

fn split_entry(entry: &str) -> Result<Pairs<'_>, AddressError> {
    if entry.is_empty() {
        return Err(AddressError::Empty);
    }
    let Some((transport, rest)) = entry.split_once(':') else {
        return Err(AddressError::MissingColon(entry.to_string()));
    };
    if transport.is_empty() {
        return Err(AddressError::MissingColon(entry.to_string()));
    }
    let mut pairs: Vec<(&str, Vec<u8>)> = Vec::new();
    if !rest.is_empty() {
        for part in rest.split(',') {
            let Some((key, value)) = part.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(AddressError::BadPair(part.to_string()));
            };
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(AddressError::DuplicateKey(key.to_string()));
            }
            pairs.push((key, unescape(value)?));
        }
    }
    Ok(Pairs { transport, pairs })
}

/// A filesystem path value: non-empty and free of NUL (which no syscall can take).
fn path_value(key: &str, v: &[u8], max: Option<usize>) -> Result<PathBuf, AddressError> {
    if v.is_empty() {
        return Err(bad_value(key, v, "is empty"));
    }
    if v.contains(&0) {
        return Err(bad_value(key, v, "contains a NUL byte"));
    }
    if max.is_some_and(|m| v.len() > m) {
        return Err(bad_value(key, v, "is too long for a unix socket address"));
    }
    Ok(PathBuf::from(OsString::from_vec(v.to_vec())))
}

fn parse_unix(p: &Pairs<'_>) -> Result<ListenAddress, AddressError> {
    const KINDS: [&str; 5] = ["path", "abstract", "dir", "tmpdir", "runtime"];
    p.only(&KINDS)?;
    let mut found = p.pairs.iter().filter(|(k, _)| KINDS.contains(k));
    let (Some((key, value)), None) = (found.next(), found.next()) else {
        let n = p.pairs.iter().filter(|(k, _)| KINDS.contains(k)).count();
        return Err(AddressError::UnixKind(n));
    };
    Ok(match *key {
        "path" => ListenAddress::UnixPath(path_value(key, value, Some(MAX_UNIX_NAME_LEN))?),
        "abstract" => {
            if value.is_empty() {
                return Err(bad_value(key, value, "is empty"));
            }
            if value.len() > MAX_UNIX_NAME_LEN {
                return Err(bad_value(
                    key,
                    value,
                    "is too long for a unix socket address",
                ));
            }
            ListenAddress::UnixAbstract(value.clone())
        }
        "dir" => ListenAddress::UnixDir(path_value(key, value, None)?),
        "tmpdir" => ListenAddress::UnixTmpdir(path_value(key, value, None)?),
        _ => {
            if value.as_slice() != b"yes" {
                return Err(bad_value(key, value, "must be \"yes\""));
            }
            ListenAddress::UnixRuntime
        }
    })
}

/// Shared by `tcp:` and `nonce-tcp:`.
fn parse_tcp(p: &Pairs<'_>) -> Result<(String, u16, Option<Family>, Option<String>), AddressError> {
    p.only(&["host", "port", "family", "bind"])?;
    let host = match p.text("host")? {
        None => "localhost".to_string(),
        Some("") => return Err(bad_value("host", b"", "is empty")),
        Some(h) => h.to_string(),
    };
    let port = match p.text("port")? {
        None => 0,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<u16>()
            .map_err(|_| bad_value("port", s.as_bytes(), "is out of range"))?,
        Some(s) => return Err(bad_value("port", s.as_bytes(), "is not a port number")),
    };
    let family = match p.text("family")? {
        None => None,
        Some(s) => Some(
            Family::parse(s)
                .ok_or_else(|| bad_value("family", s.as_bytes(), "must be ipv4 or ipv6"))?,
        ),
    };
    let bind = match p.text("bind")? {
        Some("") => return Err(bad_value("bind", b"", "is empty")),
        b => b.map(str::to_string),
    };
    Ok((host, port, family, bind))
}

fn parse_entry(entry: &str) -> Result<ListenAddress, AddressError> {
    let p = split_entry(entry)?;
    match p.transport {
        "unix" => parse_unix(&p),
        "tcp" => {
            let (host, port, family, bind) = parse_tcp(&p)?;
            Ok(ListenAddress::Tcp {
                host,
                port,
                family,
                bind,
            })
        }
        "nonce-tcp" => {
            let (host, port, family, bind) = parse_tcp(&p)?;
            Ok(ListenAddress::NonceTcp {
                host,
                port,
                family,
                bind,
            })
        }
        "systemd" => {
            p.only(&[])?;
            Ok(ListenAddress::Systemd)
        }
        // Valid client-side transports that a server cannot listen on (here).
        "launchd" | "autolaunch" | "unixexec" => {
            Err(AddressError::UnsupportedTransport(p.transport.to_string()))
        }
        t => Err(AddressError::UnknownTransport(t.to_string())),
    }
}

/// Parse a `;`-separated list of listen addresses. Values are unescaped; a single trailing
/// `;` is tolerated (libdbus does too), any other empty entry is an error.
pub fn parse_listen(s: &str) -> Result<Vec<ListenAddress>, AddressError> {
    let s = s.strip_suffix(';').unwrap_or(s);
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    s.split(';').map(parse_entry).collect()
}

/// How one entry of a listen address string turned out, for [`parse_listen_entries`].
pub type ListenEntry<'a> = (&'a str, Result<ListenAddress, AddressError>);

/// Parse a `;`-separated listen address the way dbus-daemon's `dbus_server_listen` takes
/// it: the syntax of every entry is checked first (any error fails the whole string), then
/// each entry is interpreted on its own, its text kept for messages. The caller tries the
/// entries in order and listens on the first that works: an unknown transport is skipped,
/// any other error in an entry reached is fatal, and a failure to bind moves on to the next.
pub fn parse_listen_entries(s: &str) -> Result<Vec<ListenEntry<'_>>, AddressError> {
    let s = s.strip_suffix(';').unwrap_or(s);
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    let entries: Vec<&str> = s.split(';').collect();
    for e in &entries {
        split_entry(e)?;
    }
    Ok(entries.into_iter().map(|e| (e, parse_entry(e))).collect())
}

/// Where `unix:runtime=yes` listens: `$XDG_RUNTIME_DIR/bus`. The caller passes the
/// variable's value (`std::env::var_os("XDG_RUNTIME_DIR")`) so this stays testable.
pub fn runtime_socket_path(
    xdg_runtime_dir: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, AddressError> {
    match xdg_runtime_dir {
        Some(d) if !d.is_empty() => Ok(Path::new(d).join("bus")),
        _ => Err(AddressError::NoRuntimeDir),
    }
}

/// A fresh socket path for `unix:dir=D` / `unix:tmpdir=D`: `D/dbus-` plus ten hex digits
/// of `random`, as dbus-daemon does. The caller retries if binding finds the name taken.
pub fn socket_in_dir(dir: &Path, random: &[u8; 5]) -> PathBuf {
    let mut name = String::with_capacity(15);
    name.push_str("dbus-");
    for &b in random {
        super::push_hex(&mut name, b);
    }
    dir.join(name)
}

fn push_family(s: &mut String, family: Option<Family>) {
    if let Some(f) = family {
        s.push_str(",family=");
        s.push_str(f.as_str());
    }
}

/// The connectable address of a filesystem socket: `unix:path=<escaped>,guid=G`.
pub fn format_unix_path(path: &Path, guid: &str) -> String {
    format!(
        "unix:path={},guid={}",
        escape(path.as_os_str().as_bytes()),
        escape(guid.as_bytes())
    )
}

/// The connectable address of an abstract socket: `unix:abstract=<escaped>,guid=G`.
pub fn format_unix_abstract(name: &[u8], guid: &str) -> String {
    format!(
        "unix:abstract={},guid={}",
        escape(name),
        escape(guid.as_bytes())
    )
}

/// The connectable address of a TCP listener: `tcp:host=H,port=N[,family=F],guid=G`.
pub fn format_tcp(host: &str, port: u16, family: Option<Family>, guid: &str) -> String {
    let mut s = format!("tcp:host={},port={port}", escape(host.as_bytes()));
    push_family(&mut s, family);
    s.push_str(",guid=");
    s.push_str(&escape(guid.as_bytes()));
    s
}

/// The connectable address of a nonce-TCP listener:
/// `nonce-tcp:host=H,port=N[,family=F],noncefile=PATH,guid=G`.
pub fn format_nonce_tcp(
    host: &str,
    port: u16,
    family: Option<Family>,
    noncefile: &Path,
    guid: &str,
) -> String {
    let mut s = format!("nonce-tcp:host={},port={port}", escape(host.as_bytes()));
    push_family(&mut s, family);
    s.push_str(",noncefile=");
    s.push_str(&escape(noncefile.as_os_str().as_bytes()));
    s.push_str(",guid=");
    s.push_str(&escape(guid.as_bytes()));
    s
}

/// Prints the listen form, escaped, so that [`parse_listen`] reads back the same value.
impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tcp = |f: &mut fmt::Formatter<'_>,
                   name: &str,
                   host: &str,
                   port: u16,
                   family: &Option<Family>,
                   bind: &Option<String>| {
            write!(f, "{name}:host={},port={port}", escape(host.as_bytes()))?;
            if let Some(fam) = family {
                write!(f, ",family={}", fam.as_str())?;
            }
            if let Some(b) = bind {
                write!(f, ",bind={}", escape(b.as_bytes()))?;
            }
            Ok(())
        };
        match self {
            ListenAddress::UnixPath(p) => {
                write!(f, "unix:path={}", escape(p.as_os_str().as_bytes()))
            }
            ListenAddress::UnixAbstract(n) => write!(f, "unix:abstract={}", escape(n)),
            ListenAddress::UnixDir(p) => write!(f, "unix:dir={}", escape(p.as_os_str().as_bytes())),
            ListenAddress::UnixTmpdir(p) => {
                write!(f, "unix:tmpdir={}", escape(p.as_os_str().as_bytes()))
            }
            ListenAddress::UnixRuntime => f.write_str("unix:runtime=yes"),
            ListenAddress::Tcp {
                host,
                port,
                family,
                bind,
            } => tcp(f, "tcp", host, *port, family, bind),
            ListenAddress::NonceTcp {
                host,
                port,
                family,
                bind,
            } => tcp(f, "nonce-tcp", host, *port, family, bind),
            ListenAddress::Systemd => f.write_str("systemd:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "0123456789abcdef0123456789abcdef";

    fn one(s: &str) -> ListenAddress {
        let v = parse_listen(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(v.len(), 1, "{s}");
        v.into_iter().next().unwrap()
    }

    fn tcp(host: &str, port: u16, family: Option<Family>, bind: Option<&str>) -> ListenAddress {
        ListenAddress::Tcp {
            host: host.into(),
            port,
            family,
            bind: bind.map(Into::into),
        }
    }

    #[test]
    fn unix_forms() {
        assert_eq!(
            one("unix:path=/run/dbus/system_bus_socket"),
            ListenAddress::UnixPath("/run/dbus/system_bus_socket".into())
        );
        assert_eq!(
            one("unix:abstract=/tmp/dbus-abc"),
            ListenAddress::UnixAbstract(b"/tmp/dbus-abc".to_vec())
        );
        assert_eq!(one("unix:dir=/tmp"), ListenAddress::UnixDir("/tmp".into()));
        assert_eq!(
            one("unix:tmpdir=/tmp"),
            ListenAddress::UnixTmpdir("/tmp".into())
        );
        assert_eq!(one("unix:runtime=yes"), ListenAddress::UnixRuntime);
        // Escaped bytes, either hex case, and a printed address's guid.
        assert_eq!(
            one("unix:path=/tmp/a%3db%20c%3D,guid=0123"),
            ListenAddress::UnixPath("/tmp/a=b c=".into())
        );
        assert_eq!(
            one("unix:abstract=x%00y"),
            ListenAddress::UnixAbstract(b"x\0y".to_vec())
        );
        assert_eq!(
            one("unix:path=/tmp/%ff"),
            ListenAddress::UnixPath(PathBuf::from(OsString::from_vec(b"/tmp/\xff".to_vec())))
        );
    }

    #[test]
    fn tcp_forms() {
        assert_eq!(one("tcp:"), tcp("localhost", 0, None, None));
        assert_eq!(
            one("tcp:host=127.0.0.1,port=0"),
            tcp("127.0.0.1", 0, None, None)
        );
        assert_eq!(
            one("tcp:host=localhost,port=12345,family=ipv4"),
            tcp("localhost", 12345, Some(Family::Ipv4), None)
        );
        assert_eq!(
            one("tcp:host=%3a%3a1,family=ipv6,port=65535,bind=*"),
            tcp("::1", 65535, Some(Family::Ipv6), Some("*"))
        );
        assert_eq!(
            one("nonce-tcp:host=localhost,port=7,bind=0.0.0.0"),
            ListenAddress::NonceTcp {
                host: "localhost".into(),
                port: 7,
                family: None,
                bind: Some("0.0.0.0".into())
            }
        );
        assert_eq!(one("systemd:"), ListenAddress::Systemd);
        assert_eq!(one(&format!("systemd:guid={G}")), ListenAddress::Systemd);
    }

    #[test]
    fn several_addresses() {
        let v = parse_listen("unix:tmpdir=/tmp;tcp:host=localhost,port=0;").unwrap();
        assert_eq!(
            v,
            vec![
                ListenAddress::UnixTmpdir("/tmp".into()),
                tcp("localhost", 0, None, None)
            ]
        );
        assert_eq!(parse_listen("systemd:;systemd:").unwrap().len(), 2);
    }

    #[test]
    fn listen_entries_one_by_one() {
        let v = parse_listen_entries("unix:path=/a;bogus:x=y;unix:;unix:path=/b;").unwrap();
        let texts: Vec<&str> = v.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            texts,
            ["unix:path=/a", "bogus:x=y", "unix:", "unix:path=/b"]
        );
        assert_eq!(v[0].1, Ok(ListenAddress::UnixPath("/a".into())));
        assert_eq!(v[1].1, Err(AddressError::UnknownTransport("bogus".into())));
        assert_eq!(v[2].1, Err(AddressError::UnixKind(0)));
        assert_eq!(v[3].1, Ok(ListenAddress::UnixPath("/b".into())));
        // Syntax is checked for every entry first, as dbus_parse_address does.
        for bad in [
            "unix:path=/a;nocolon",
            "unix:path=/a;unix:path",
            "unix:path=/a;;",
        ] {
            assert!(parse_listen_entries(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_listen_entries(""), Err(AddressError::Empty));
    }

    #[test]
    fn errors() {
        type Check = fn(&AddressError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| *e == AddressError::Empty),
            (";", |e| *e == AddressError::Empty),
            ("unix:path=/a;;unix:path=/b", |e| *e == AddressError::Empty),
            ("unix:path=/a;;", |e| *e == AddressError::Empty),
            ("unixpath=/a", |e| {
                matches!(e, AddressError::MissingColon(_))
            }),
            (":path=/a", |e| matches!(e, AddressError::MissingColon(_))),
            ("unix:path", |e| matches!(e, AddressError::BadPair(_))),
            ("unix:=x", |e| matches!(e, AddressError::BadPair(_))),
            ("unix:path=/a,", |e| matches!(e, AddressError::BadPair(_))),
            (
                "unix:path=/a,path=/b",
                |e| matches!(e, AddressError::DuplicateKey(k) if k == "path"),
            ),
            ("unix:path=/a%", |e| {
                matches!(e, AddressError::BadEscape { .. })
            }),
            ("unix:path=/a%4", |e| {
                matches!(e, AddressError::BadEscape { .. })
            }),
            ("unix:path=/a%zz", |e| {
                matches!(e, AddressError::BadEscape { .. })
            }),
            ("unix:path=/a b", |e| {
                matches!(e, AddressError::BadEscape { .. })
            }),
            ("unix:path=/a=b", |e| {
                matches!(e, AddressError::BadEscape { .. })
            }),
            ("unix:path=/tmp/é", |e| {
                matches!(e, AddressError::BadEscape { .. })
            }),
            ("tcp:host=::1", |e| {
                matches!(e, AddressError::BadEscape { .. })
            }),
            ("unix:", |e| *e == AddressError::UnixKind(0)),
            ("unix:guid=00", |e| *e == AddressError::UnixKind(0)),
            ("unix:path=/a,dir=/tmp", |e| *e == AddressError::UnixKind(2)),
            ("unix:tmpdir=/tmp,runtime=yes", |e| {
                *e == AddressError::UnixKind(2)
            }),
            (
                "unix:path=/a,mode=0",
                |e| matches!(e, AddressError::UnknownKey { key, .. } if key == "mode"),
            ),
            ("unix:Path=/a", |e| {
                matches!(e, AddressError::UnknownKey { .. })
            }),
            ("tcp:host=x,noncefile=/n", |e| {
                matches!(e, AddressError::UnknownKey { .. })
            }),
            ("systemd:path=/a", |e| {
                matches!(e, AddressError::UnknownKey { .. })
            }),
            ("unix:runtime=no", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("unix:runtime=YES", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("unix:path=", |e| matches!(e, AddressError::BadValue { .. })),
            ("unix:path=/a%00b", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("unix:dir=", |e| matches!(e, AddressError::BadValue { .. })),
            ("unix:tmpdir=", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("unix:abstract=", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:port=65536", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:port=-1", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:port=%2b1", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:port=", |e| matches!(e, AddressError::BadValue { .. })),
            ("tcp:port=http", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:family=ipv5", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:family=IPV4", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:host=", |e| matches!(e, AddressError::BadValue { .. })),
            ("tcp:host=%ff", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("tcp:bind=", |e| matches!(e, AddressError::BadValue { .. })),
            ("nonce-tcp:port=99999", |e| {
                matches!(e, AddressError::BadValue { .. })
            }),
            ("foo:bar=baz", |e| {
                *e == AddressError::UnknownTransport("foo".into())
            }),
            ("UNIX:path=/a", |e| {
                matches!(e, AddressError::UnknownTransport(_))
            }),
            ("launchd:env=X", |e| {
                matches!(e, AddressError::UnsupportedTransport(_))
            }),
            ("autolaunch:", |e| {
                matches!(e, AddressError::UnsupportedTransport(_))
            }),
            ("unixexec:path=/bin/sh", |e| {
                matches!(e, AddressError::UnsupportedTransport(_))
            }),
            ("unix:path=/a;bogus", |e| {
                matches!(e, AddressError::MissingColon(_))
            }),
        ];
        for (s, check) in cases {
            match parse_listen(s) {
                Ok(v) => panic!("{s:?} parsed as {v:?}"),
                Err(e) => {
                    assert!(check(&e), "{s:?}: unexpected {e:?}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn unix_name_length_limit() {
        let ok = format!("/{}", "a".repeat(MAX_UNIX_NAME_LEN - 1));
        assert!(parse_listen(&format!("unix:path={ok}")).is_ok());
        assert!(parse_listen(&format!("unix:path={ok}a")).is_err());
        let ok = "b".repeat(MAX_UNIX_NAME_LEN);
        assert!(parse_listen(&format!("unix:abstract={ok}")).is_ok());
        assert!(parse_listen(&format!("unix:abstract={ok}b")).is_err());
        // Limits apply to the unescaped bytes.
        let escaped = "%61".repeat(MAX_UNIX_NAME_LEN);
        assert!(parse_listen(&format!("unix:abstract={escaped}")).is_ok());
        // dir= has no such limit here: the socket name inside it is checked when binding.
        assert!(parse_listen(&format!("unix:dir=/{}", "d".repeat(300))).is_ok());
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(b"/tmp/a=b"), "/tmp/a%3db");
        assert_eq!(escape(b"AZaz09-_/.\\*"), "AZaz09-_/.\\*");
        assert_eq!(escape(b" ,;:%\0\xff\n~"), "%20%2c%3b%3a%25%00%ff%0a%7e");
        assert_eq!(escape(b""), "");
        assert_eq!(unescape("%3D%3d").unwrap(), b"==");
        assert_eq!(unescape("").unwrap(), b"");
        assert_eq!(unescape("a%25b").unwrap(), b"a%b");
        for bad in ["%", "%a", "%g0", "a,b", "a;b", "a:b", "~", "a\u{e9}"] {
            assert!(unescape(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn escape_round_trip_all_bytes() {
        let all: Vec<u8> = (0..=255u8).collect();
        let e = escape(&all);
        assert!(e.bytes().all(|b| optionally_escaped(b) || b == b'%'));
        assert_eq!(unescape(&e).unwrap(), all);
    }

    #[test]
    fn formatting() {
        assert_eq!(
            format_unix_path(Path::new("/tmp/dbus-x"), G),
            format!("unix:path=/tmp/dbus-x,guid={G}")
        );
        // The unix-runtime test: a directory name containing '='.
        assert_eq!(
            format_unix_path(Path::new("/run/user/1000/a=b/bus"), G),
            format!("unix:path=/run/user/1000/a%3db/bus,guid={G}")
        );
        assert_eq!(
            format_unix_abstract(b"/tmp/dbus-Q", G),
            format!("unix:abstract=/tmp/dbus-Q,guid={G}")
        );
        assert_eq!(
            format_tcp("localhost", 4711, None, G),
            format!("tcp:host=localhost,port=4711,guid={G}")
        );
        assert_eq!(
            format_tcp("::1", 1, Some(Family::Ipv6), G),
            format!("tcp:host=%3a%3a1,port=1,family=ipv6,guid={G}")
        );
        assert_eq!(
            format_nonce_tcp("127.0.0.1", 9, Some(Family::Ipv4), Path::new("/tmp/n x"), G),
            format!("nonce-tcp:host=127.0.0.1,port=9,family=ipv4,noncefile=/tmp/n%20x,guid={G}")
        );
    }

    #[test]
    fn printed_addresses_parse_back() {
        let p = Path::new("/tmp/we ird=dir/bus;x,y");
        assert_eq!(
            one(&format_unix_path(p, G)),
            ListenAddress::UnixPath(p.to_path_buf())
        );
        assert_eq!(
            one(&format_unix_abstract(b"\x01abs,=;", G)),
            ListenAddress::UnixAbstract(b"\x01abs,=;".to_vec())
        );
        assert_eq!(
            one(&format_tcp("::1", 80, Some(Family::Ipv6), G)),
            tcp("::1", 80, Some(Family::Ipv6), None)
        );
    }

    #[test]
    fn display_round_trips() {
        let all = vec![
            ListenAddress::UnixPath("/tmp/a b=c".into()),
            ListenAddress::UnixAbstract(b"\0odd,name".to_vec()),
            ListenAddress::UnixDir("/run/x%y".into()),
            ListenAddress::UnixTmpdir("/tmp".into()),
            ListenAddress::UnixRuntime,
            tcp("fe80::1%eth0", 0, Some(Family::Ipv6), Some("*")),
            tcp("localhost", 65535, None, None),
            ListenAddress::NonceTcp {
                host: "h".into(),
                port: 3,
                family: Some(Family::Ipv4),
                bind: None,
            },
            ListenAddress::Systemd,
        ];
        let joined = all
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";");
        assert_eq!(parse_listen(&joined).unwrap(), all);
        assert_eq!(ListenAddress::UnixRuntime.to_string(), "unix:runtime=yes");
        assert_eq!(
            ListenAddress::UnixPath("/tmp/a=b".into()).to_string(),
            "unix:path=/tmp/a%3db"
        );
    }

    #[test]
    fn runtime_and_dir_helpers() {
        use std::ffi::OsStr;
        assert_eq!(
            runtime_socket_path(Some(OsStr::new("/run/user/1000"))).unwrap(),
            PathBuf::from("/run/user/1000/bus")
        );
        assert_eq!(runtime_socket_path(None), Err(AddressError::NoRuntimeDir));
        assert_eq!(
            runtime_socket_path(Some(OsStr::new(""))),
            Err(AddressError::NoRuntimeDir)
        );
        let a = socket_in_dir(Path::new("/tmp"), &[0xde, 0xad, 0xbe, 0xef, 0x01]);
        let b = socket_in_dir(Path::new("/tmp"), &[0xde, 0xad, 0xbe, 0xef, 0x02]);
        assert_eq!(a, Path::new("/tmp/dbus-deadbeef01"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/tmp")));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 15, "{name}");
        assert!(name.starts_with("dbus-"));
        assert!(name[5..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn family_names() {
        for f in [Family::Ipv4, Family::Ipv6] {
            assert_eq!(Family::parse(f.as_str()), Some(f));
        }
        assert_eq!(Family::parse("unix"), None);
    }
}
