//! The bus configuration file (dbus-daemon's `<busconfig>` XML) loaded into a typed [`Config`].
//!
//! Parsing is as strict as dbus-daemon's: unknown elements or attributes, bad values and unknown
//! limits are errors, reported as `file:line: element: message`. `<include>` and `<includedir>`
//! are followed (paths relative to the including file); the results are merged the way
//! dbus-daemon merges them (lists appended, scalars last-wins, limits carried through). Like
//! dbus-daemon, a broken file inside an `<includedir>` is logged and skipped rather than fatal, so
//! one bad drop-in cannot take the bus down. A missing `<listen>` is not an error here because
//! `--address` may supply one; callers use [`Config::validate_has_listen`].

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::bus::limits::{LimitError, Limits};
use crate::bus::policy::{self, Policy, PolicyBuilder};
use crate::wire::auth::Mechanism;

/// `${datadir}` of the dbus installation sluicebus stands in for.
const DATADIR: &str = "/usr/share";

/// The stock session bus configuration (`--session`).
pub const SESSION_CONFIG_FILE: &str = "/usr/share/dbus-1/session.conf";
/// The stock system bus configuration (`--system`).
pub const SYSTEM_CONFIG_FILE: &str = "/usr/share/dbus-1/system.conf";

/// Includes nested deeper than this are refused (a backstop; real cycles are detected by path).
const MAX_INCLUDE_DEPTH: usize = 64;

/// A loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The top-level file this was loaded from (a placeholder for built-in configurations).
    pub path: PathBuf,
    /// `<type>`: `session`, `system`, or anything else; last wins.
    pub bus_type: Option<String>,
    /// `<user>`: user name or uid to switch to after startup.
    pub user: Option<String>,
    /// `<fork/>` present.
    pub fork: bool,
    /// `<keep_umask/>` present.
    pub keep_umask: bool,
    /// `<syslog/>` present.
    pub syslog: bool,
    /// `<listen>` addresses in file order (includes appended where they occur).
    pub listen: Vec<String>,
    /// `<pidfile>`, last wins.
    pub pidfile: Option<PathBuf>,
    /// `<auth>` mechanisms in order, each one the bus implements (an unknown one is a
    /// configuration error); empty = all mechanisms allowed.
    pub auth: Vec<String>,
    /// Service directories in priority order, duplicates removed, standard directories expanded
    /// (from the environment at load time).
    pub servicedirs: Vec<PathBuf>,
    /// `<servicehelper>`, last wins.
    pub servicehelper: Option<PathBuf>,
    /// `<allow_anonymous/>` present.
    pub allow_anonymous: bool,
    /// Limits: built-in defaults overridden by `<limit>`.
    pub limits: Limits,
    /// The compiled `<policy>` rules.
    pub policy: Policy,
    /// Directories of the configuration files read (or looked for) and the `<includedir>`s:
    /// a change in any of them reloads the configuration, as in dbus-daemon.
    pub config_dirs: Vec<PathBuf>,
}

/// Why a configuration could not be loaded. Displays as `file:line: element: message` (line and
/// element are left out when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, 0 if not applicable (e.g. the file cannot be read).
    pub line: u32,
    /// The element concerned, empty if none (XML syntax errors, unreadable file).
    pub element: String,
    /// What is wrong.
    pub message: ConfigProblem,
}

/// What is wrong with a configuration. Displays as dbus-daemon words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// A configuration file could not be read.
    Open {
        /// The file.
        path: PathBuf,
        /// Why, as the system says it.
        error: String,
        /// The file does not exist (ReloadConfig then answers `FileNotFound`).
        not_found: bool,
    },
    /// An `<includedir>` could not be listed.
    OpenDir {
        /// The directory.
        path: PathBuf,
        /// Why, as the system says it.
        error: String,
    },
    /// A file larger than dbus-daemon accepts.
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: usize,
    },
    /// Elements nested deeper than [`MAX_CONFIG_NESTING`].
    TooDeep,
    /// Not well-formed XML.
    Xml(String),
    /// A file includes itself, directly or not.
    CircularInclude(PathBuf),
    /// Includes nested too deeply (a backstop against runaway include chains).
    IncludesTooDeep(PathBuf),
    /// No `<listen>` and no `--address`.
    NoListen,
    /// A bad `<policy>`, `<allow>` or `<deny>`.
    Policy(policy::PolicyError),
    /// A bad `<limit>`.
    Limit(LimitError),
    /// An `<auth>` naming a mechanism the bus does not implement (dbus-daemon refuses to
    /// start rather than offer every mechanism).
    UnsupportedAuth(String),
    /// Any other misplaced or malformed element or attribute.
    Invalid(String),
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigProblem::Open { path, error, .. } => {
                write!(f, "Failed to open \"{}\": {error}", path.display())
            }
            ConfigProblem::OpenDir { path, error } => {
                write!(
                    f,
                    "Failed to open directory \"{}\": {error}",
                    path.display()
                )
            }
            ConfigProblem::TooLarge { path, size } => {
                write!(
                    f,
                    "File size {size} of \"{}\" is too large.",
                    path.display()
                )
            }
            ConfigProblem::TooDeep => {
                write!(
                    f,
                    "elements nested more than {MAX_CONFIG_NESTING} levels deep"
                )
            }
            ConfigProblem::Xml(e) => f.write_str(e),
            ConfigProblem::CircularInclude(path) => {
                write!(f, "Circular inclusion of file '{}'", path.display())
            }
            ConfigProblem::IncludesTooDeep(path) => {
                write!(f, "Includes nested too deeply at '{}'", path.display())
            }
            ConfigProblem::NoListen => f.write_str(
                "Configuration file needs one or more <listen> elements giving addresses",
            ),
            ConfigProblem::Policy(e) => e.fmt(f),
            ConfigProblem::Limit(e) => e.fmt(f),
            ConfigProblem::UnsupportedAuth(m) => {
                // dbus-daemon's words, with its list of mechanisms.
                let names: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
                write!(
                    f,
                    "Unsupported auth mechanism \"{m}\" in bus config file detected. \
                     Supported mechanisms are \"{}\".",
                    names.join(", ")
                )
            }
            ConfigProblem::Invalid(text) => f.write_str(text),
        }
    }
}

impl ConfigProblem {
    /// A file that could not be read.
    pub fn open(path: &Path, e: &std::io::Error) -> Self {
        ConfigProblem::Open {
            path: path.to_path_buf(),
            error: e.to_string(),
            not_found: e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

impl From<String> for ConfigProblem {
    fn from(text: String) -> Self {
        ConfigProblem::Invalid(text)
    }
}

impl From<&str> for ConfigProblem {
    fn from(text: &str) -> Self {
        ConfigProblem::Invalid(text.to_owned())
    }
}

impl From<policy::PolicyError> for ConfigProblem {
    fn from(e: policy::PolicyError) -> Self {
        ConfigProblem::Policy(e)
    }
}

impl From<LimitError> for ConfigProblem {
    fn from(e: LimitError) -> Self {
        ConfigProblem::Limit(e)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.element.is_empty() {
            write!(f, ": {}", self.element)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// dbus-daemon refuses to start without a listen address unless `--address` was given; call
    /// this when it was not.
    pub fn validate_has_listen(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError {
                file: self.path.clone(),
                line: 0,
                element: "busconfig".into(),
                message: ConfigProblem::NoListen,
            });
        }
        Ok(())
    }
}

/// Largest configuration file accepted, like dbus-daemon.
pub const MAX_CONFIG_FILE_SIZE: usize = 1024 * 1024;
/// Deepest element nesting accepted (a real busconfig needs 4).
pub const MAX_CONFIG_NESTING: usize = 32;

/// The line where element nesting first goes deeper than `max`, if it does. A cheap scan
/// that skips comments, processing instructions, declarations, CDATA and quoted attribute
/// values; it only has to be right about depth, the XML parser checks everything else.
fn nesting_exceeds(text: &str, max: usize) -> Option<u32> {
    let b = text.as_bytes();
    let (mut i, mut depth, mut line) = (0usize, 0usize, 1u32);
    let skip_to = |from: usize, pat: &[u8]| -> usize {
        b.get(from..)
            .and_then(|rest| rest.windows(pat.len()).position(|w| w == pat))
            .map_or(b.len(), |p| from + p + pat.len())
    };
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'<' => {
                let rest = &b[i..];
                if rest.starts_with(b"<!--") {
                    i = skip_to(i + 4, b"-->");
                } else if rest.starts_with(b"<![CDATA[") {
                    i = skip_to(i + 9, b"]]>");
                } else if rest.starts_with(b"<?") {
                    i = skip_to(i + 2, b"?>");
                } else if rest.starts_with(b"<!") {
                    i = skip_to(i + 2, b">");
                } else if rest.starts_with(b"</") {
                    depth = depth.saturating_sub(1);
                    i = skip_to(i + 2, b">");
                } else {
                    // A start tag: find its end, skipping quoted attribute values.
                    let mut j = i + 1;
                    let mut quote = 0u8;
                    while j < b.len() {
                        let c = b[j];
                        if quote != 0 {
                            if c == quote {
                                quote = 0;
                            }
                        } else if c == b'"' || c == b'\'' {
                            quote = c;
                        } else if c == b'>' {
                            break;
                        }
                        j += 1;
                    }
                    let self_closing = j > 0 && b.get(j - 1) == Some(&b'/');
                    if !self_closing {
                        depth += 1;
                        if depth > max {
                            return Some(line);
                        }
                    }
                    i = j + 1;
                }
            }
            _ => i += 1,
        }
    }
    None
}

impl ConfigError {
    /// Whether the error is a file (or included file) that does not exist, which
    /// ReloadConfig reports as `org.freedesktop.DBus.Error.FileNotFound`.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.message,
            ConfigProblem::Open {
                not_found: true,
                ..
            }
        )
    }
}

/// Read a configuration file, at most one byte past [`MAX_CONFIG_FILE_SIZE`]: an oversized
/// file is then refused by `load_text` without being read whole, and a device such as
/// `/dev/zero` named by an `<include>` cannot make the loader read forever. (A pipe stays
/// readable, as `--config-file=<(…)` needs.)
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)?
        .take(MAX_CONFIG_FILE_SIZE as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Load and compile the configuration file at `path`, following its includes.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_file(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        element: String::new(),
        message: ConfigProblem::open(path, &e),
    })?;
    load_from_str(&text, path)
}

/// Compile configuration XML held in memory; `origin` names it in errors and is the base for
/// relative includes and directories.
pub fn load_from_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let mut st = State::default();
    let mut loader = Loader {
        stack: vec![canonical(origin)],
        dirs: origin.parent().map(Path::to_path_buf).into_iter().collect(),
    };
    loader.load_text(&mut st, origin, text)?;
    if let Some(e) = st.bad_auth.take() {
        return Err(e);
    }
    let mut c = st.finish(origin);
    c.config_dirs = loader.dirs;
    Ok(c)
}

/// The configuration of stock session.conf without reading any file: EXTERNAL only, the standard
/// session service directories, allow-everything policy, the session limits, and listening on
/// `unix:runtime=yes` when `XDG_RUNTIME_DIR` is set (else `unix:tmpdir=/tmp`).
pub fn builtin_session() -> Config {
    // Constant, known-good input (covered by a test), so failure is impossible.
    let mut c = load_from_str(BUILTIN_SESSION, Path::new("<built-in session config>"))
        .expect("built-in session configuration is valid");
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|v| !v.is_empty());
    c.listen = vec![if runtime {
        "unix:runtime=yes"
    } else {
        "unix:tmpdir=/tmp"
    }
    .to_string()];
    c
}

const BUILTIN_SESSION: &str = r#"<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <standard_session_servicedirs/>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_incoming_unix_fds">250000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_outgoing_unix_fds">250000000</limit>
  <limit name="max_message_size">1000000000</limit>
  <limit name="service_start_timeout">120000</limit>
  <limit name="auth_timeout">240000</limit>
  <limit name="pending_fd_timeout">150000</limit>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_incomplete_connections">10000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_pending_service_starts">10000</limit>
  <limit name="max_names_per_connection">50000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
</busconfig>"#;

/// The standard session service directories (`<standard_session_servicedirs/>`, in
/// dbus-daemon's order), read from the environment now.
fn standard_session_servicedirs() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut dirs = Vec::new();
    if let Some(rt) = env("XDG_RUNTIME_DIR") {
        dirs.push(PathBuf::from(rt).join("dbus-1/services"));
    }
    let data_home = env("XDG_DATA_HOME").map(PathBuf::from).or_else(|| {
        let home = env("HOME").map(PathBuf::from).or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })?;
        Some(home.join(".local/share"))
    });
    if let Some(d) = data_home {
        dirs.push(d.join("dbus-1/services"));
    }
    let data_dirs = env("XDG_DATA_DIRS")
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/usr/local/share:/usr/share".to_string());
    for d in data_dirs.split(':').filter(|d| !d.is_empty()) {
        dirs.push(Path::new(d).join("dbus-1/services"));
    }
    dirs.push(Path::new(DATADIR).join("dbus-1/services"));
    dirs
}

/// The standard system service directories (`<standard_system_servicedirs/>`).
fn standard_system_servicedirs() -> Vec<PathBuf> {
    ["/usr/local/share", "/usr/share", DATADIR, "/lib"]
        .iter()
        .map(|d| Path::new(d).join("dbus-1/system-services"))
        .collect()
}

/// Canonical form of a path for include-cycle detection; falls back to the path itself.
fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Everything collected so far; cloned so a failing `<includedir>` file can be rolled back.
#[derive(Debug, Clone, Default)]
struct State {
    bus_type: Option<String>,
    user: Option<String>,
    fork: bool,
    keep_umask: bool,
    syslog: bool,
    listen: Vec<String>,
    pidfile: Option<PathBuf>,
    auth: Vec<String>,
    /// The first `<auth>` with an unknown mechanism. Reported once the whole configuration is
    /// read, as dbus-daemon checks the merged list: a file in an `<includedir>` is not
    /// skipped for it.
    bad_auth: Option<ConfigError>,
    servicedirs: Vec<PathBuf>,
    servicehelper: Option<PathBuf>,
    allow_anonymous: bool,
    limits: Limits,
    policy: PolicyBuilder,
}

impl State {
    fn add_servicedir(&mut self, d: PathBuf) {
        if !self.servicedirs.contains(&d) {
            self.servicedirs.push(d);
        }
    }

    fn finish(self, path: &Path) -> Config {
        Config {
            path: path.to_path_buf(),
            bus_type: self.bus_type,
            user: self.user,
            fork: self.fork,
            keep_umask: self.keep_umask,
            syslog: self.syslog,
            listen: self.listen,
            pidfile: self.pidfile,
            auth: self.auth,
            servicedirs: self.servicedirs,
            servicehelper: self.servicehelper,
            allow_anonymous: self.allow_anonymous,
            limits: self.limits,
            policy: self.policy.build(),
            config_dirs: Vec::new(),
        }
    }
}

/// One file being parsed: for error positions and relative paths.
struct FileCtx<'a, 'input> {
    doc: &'a roxmltree::Document<'input>,
    file: &'a Path,
    dir: &'a Path,
}

impl FileCtx<'_, '_> {
    fn err(&self, node: roxmltree::Node, message: impl Into<ConfigProblem>) -> ConfigError {
        let line = self.doc.text_pos_at(node.range().start).row;
        let element = if node.is_element() {
            node.tag_name().name()
        } else {
            ""
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            element: element.to_string(),
            message: message.into(),
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn attrs<'n>(
        &self,
        node: roxmltree::Node<'n, '_>,
    ) -> Result<Vec<(&'n str, &'n str)>, ConfigError> {
        let mut v = Vec::new();
        for a in node.attributes() {
            if a.namespace().is_some() {
                return Err(self.err(
                    node,
                    format!("Attribute \"{}\" is invalid on this element", a.name()),
                ));
            }
            v.push((a.name(), a.value()));
        }
        Ok(v)
    }

    fn no_attrs(&self, node: roxmltree::Node) -> Result<(), ConfigError> {
        match node.attributes().next() {
            Some(a) => Err(self.err(
                node,
                format!(
                    "Attribute \"{}\" is invalid on <{}> element in this context",
                    a.name(),
                    node.tag_name().name()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Text of an element that must contain only text, trimmed; empty is an error.
    fn text(&self, node: roxmltree::Node) -> Result<String, ConfigError> {
        let mut s = String::new();
        for c in node.children() {
            if c.is_element() {
                return Err(self.err(
                    c,
                    format!(
                        "Element <{}> is not allowed in this context",
                        c.tag_name().name()
                    ),
                ));
            }
            if c.is_text() {
                s.push_str(c.text().unwrap_or(""));
            }
        }
        let t = s.trim();
        if t.is_empty() {
            return Err(self.err(
                node,
                format!(
                    "XML element <{}> was expected to have content inside it",
                    node.tag_name().name()
                ),
            ));
        }
        Ok(t.to_string())
    }

    /// An element that must have no content but whitespace and comments.
    fn empty(&self, node: roxmltree::Node) -> Result<(), ConfigError> {
        for c in node.children() {
            if c.is_element() {
                return Err(self.err(
                    c,
                    format!(
                        "Element <{}> is not allowed in this context",
                        c.tag_name().name()
                    ),
                ));
            }
            if c.is_text() && !c.text().unwrap_or("").trim().is_empty() {
                return Err(self.err(
                    node,
                    format!(
                        "No text content expected inside XML element {} in configuration file",
                        node.tag_name().name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn yes_no(
    ctx: &FileCtx,
    node: roxmltree::Node,
    attr: &str,
    v: Option<&str>,
) -> Result<bool, ConfigError> {
    match v {
        None | Some("no") => Ok(false),
        Some("yes") => Ok(true),
        Some(_) => Err(ctx.err(
            node,
            format!("{attr} attribute must have value \"yes\" or \"no\""),
        )),
    }
}

/// Walks files; owns the include stack.
struct Loader {
    stack: Vec<PathBuf>,
    /// Directories holding the files read or looked for, and `<includedir>`s (deduplicated).
    dirs: Vec<PathBuf>,
}

impl Loader {
    /// Remember `dir` as one whose changes should trigger a reload.
    fn watch(&mut self, dir: &Path) {
        if !self.dirs.iter().any(|d| d == dir) {
            self.dirs.push(dir.to_path_buf());
        }
    }

    fn load_text(&mut self, st: &mut State, file: &Path, text: &str) -> Result<(), ConfigError> {
        // The XML parser recurses per element: bound the input before handing it over, so a
        // hostile file is an error, never a stack overflow (dbus-daemon also caps files at 1 MB).
        if text.len() > MAX_CONFIG_FILE_SIZE {
            return Err(ConfigError {
                file: file.to_path_buf(),
                line: 0,
                element: String::new(),
                message: ConfigProblem::TooLarge {
                    path: file.to_path_buf(),
                    // Only the first bytes past the limit were read; a regular file's
                    // metadata has its true size.
                    size: fs::metadata(file)
                        .ok()
                        .filter(|m| m.is_file())
                        .map_or(text.len(), |m| m.len() as usize),
                },
            });
        }
        if let Some(line) = nesting_exceeds(text, MAX_CONFIG_NESTING) {
            return Err(ConfigError {
                file: file.to_path_buf(),
                line,
                element: String::new(),
                message: ConfigProblem::TooDeep,
            });
        }
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: e.pos().row,
            element: String::new(),
            message: ConfigProblem::Xml(e.to_string()),
        })?;
        let dir = file.parent().unwrap_or(Path::new("/"));
        let ctx = FileCtx {
            doc: &doc,
            file,
            dir,
        };
        let root = doc.root_element();
        if root.tag_name().name() != "busconfig" || root.tag_name().namespace().is_some() {
            return Err(ctx.err(
                root,
                format!(
                    "Unknown element <{}> at root of configuration file",
                    root.tag_name().name()
                ),
            ));
        }
        ctx.no_attrs(root)?;
        for child in root.children() {
            if child.is_element() {
                self.element(st, &ctx, child)?;
            } else if child.is_text() && !child.text().unwrap_or("").trim().is_empty() {
                return Err(ctx.err(
                    root,
                    "No text content expected inside XML element busconfig in configuration file",
                ));
            }
        }
        Ok(())
    }

    fn element(
        &mut self,
        st: &mut State,
        ctx: &FileCtx,
        node: roxmltree::Node,
    ) -> Result<(), ConfigError> {
        let name = node.tag_name().name();
        if node.tag_name().namespace().is_some() {
            return Err(ctx.err(
                node,
                format!("Element <{name}> not allowed inside <busconfig> in configuration file"),
            ));
        }
        match name {
            "user" | "type" | "listen" | "pidfile" | "auth" | "servicedir" | "servicehelper"
            | "includedir" => {
                ctx.no_attrs(node)?;
                let text = ctx.text(node)?;
                match name {
                    "user" => st.user = Some(text),
                    "type" => st.bus_type = Some(text),
                    "listen" => st.listen.push(text),
                    "pidfile" => st.pidfile = Some(PathBuf::from(text)),
                    "auth" => {
                        if Mechanism::parse(&text).is_none() && st.bad_auth.is_none() {
                            st.bad_auth =
                                Some(ctx.err(node, ConfigProblem::UnsupportedAuth(text.clone())));
                        }
                        st.auth.push(text)
                    }
                    "servicedir" => st.add_servicedir(ctx.resolve(&text)),
                    "servicehelper" => st.servicehelper = Some(ctx.resolve(&text)),
                    _ => self.include_dir(st, ctx, node, &ctx.resolve(&text))?,
                }
            }
            "fork"
            | "syslog"
            | "keep_umask"
            | "allow_anonymous"
            | "standard_session_servicedirs"
            | "standard_system_servicedirs" => {
                ctx.no_attrs(node)?;
                ctx.empty(node)?;
                match name {
                    "fork" => st.fork = true,
                    "syslog" => st.syslog = true,
                    "keep_umask" => st.keep_umask = true,
                    "allow_anonymous" => st.allow_anonymous = true,
                    "standard_session_servicedirs" => standard_session_servicedirs()
                        .into_iter()
                        .for_each(|d| st.add_servicedir(d)),
                    _ => standard_system_servicedirs()
                        .into_iter()
                        .for_each(|d| st.add_servicedir(d)),
                }
            }
            "include" => {
                let (mut ignore_missing, mut if_selinux, mut root_relative) = (None, None, None);
                for (k, v) in ctx.attrs(node)? {
                    let slot = match k {
                        "ignore_missing" => &mut ignore_missing,
                        "if_selinux_enabled" => &mut if_selinux,
                        "selinux_root_relative" => &mut root_relative,
                        _ => {
                            return Err(ctx.err(
                                node,
                                format!(
                                "Attribute \"{k}\" is invalid on <include> element in this context"
                            ),
                            ))
                        }
                    };
                    *slot = Some(v);
                }
                let ignore_missing = yes_no(ctx, node, "ignore_missing", ignore_missing)?;
                let if_selinux = yes_no(ctx, node, "if_selinux_enabled", if_selinux)?;
                let root_relative = yes_no(ctx, node, "selinux_root_relative", root_relative)?;
                let text = ctx.text(node)?;
                // SELinux is never enabled under sluicebus.
                if if_selinux {
                    return Ok(());
                }
                if root_relative {
                    return Err(ctx.err(
                        node,
                        "Could not determine SELinux policy root for relative inclusion",
                    ));
                }
                self.include_file(st, ctx, node, &ctx.resolve(&text), ignore_missing)?;
            }
            "policy" => self.policy(st, ctx, node)?,
            "limit" => {
                let mut lname = None;
                for (k, v) in ctx.attrs(node)? {
                    if k != "name" {
                        return Err(ctx.err(
                            node,
                            format!(
                                "Attribute \"{k}\" is invalid on <limit> element in this context"
                            ),
                        ));
                    }
                    lname = Some(v);
                }
                let Some(lname) = lname else {
                    return Err(ctx.err(node, "<limit> element must have a \"name\" attribute"));
                };
                let text = ctx.text(node)?;
                let value: i64 = text.parse().map_err(|_| {
                    ctx.err(
                        node,
                        format!(
                            "<limit name=\"{lname}\"> element has invalid value (could not parse as integer)"
                        ),
                    )
                })?;
                st.limits.set(lname, value).map_err(|m| ctx.err(node, m))?;
            }
            "selinux" => {
                ctx.no_attrs(node)?;
                for c in node.children() {
                    if c.is_element() {
                        if c.tag_name().name() != "associate" {
                            return Err(ctx.err(
                                c,
                                format!(
                                    "Element <{}> not allowed inside <selinux> in configuration file",
                                    c.tag_name().name()
                                ),
                            ));
                        }
                        let (mut own, mut context) = (None, None);
                        for (k, v) in ctx.attrs(c)? {
                            match k {
                                "own" => own = Some(v),
                                "context" => context = Some(v),
                                _ => {
                                    return Err(ctx.err(
                                        c,
                                        format!("Attribute \"{k}\" is invalid on <associate> element in this context"),
                                    ))
                                }
                            }
                        }
                        if own.is_none() || context.is_none() {
                            return Err(ctx.err(
                                c,
                                "Element <associate> must have attributes own=\"<servicename>\" and context=\"<selinux context>\"",
                            ));
                        }
                        ctx.empty(c)?;
                    } else if c.is_text() && !c.text().unwrap_or("").trim().is_empty() {
                        return Err(ctx.err(
                            node,
                            "No text content expected inside XML element selinux in configuration file",
                        ));
                    }
                }
            }
            "apparmor" => {
                for (k, v) in ctx.attrs(node)? {
                    if k != "mode" {
                        return Err(ctx.err(
                            node,
                            format!("Attribute \"{k}\" is invalid on <apparmor> element in this context"),
                        ));
                    }
                    if !matches!(v, "enabled" | "disabled" | "required") {
                        return Err(ctx.err(
                            node,
                            format!("AppArmor mode \"{v}\" is not valid: expected enabled, disabled or required"),
                        ));
                    }
                }
                ctx.empty(node)?;
            }
            _ => {
                return Err(ctx.err(
                    node,
                    format!(
                        "Element <{name}> not allowed inside <busconfig> in configuration file"
                    ),
                ))
            }
        }
        Ok(())
    }

    fn policy(
        &mut self,
        st: &mut State,
        ctx: &FileCtx,
        node: roxmltree::Node,
    ) -> Result<(), ConfigError> {
        let pctx = policy::parse_policy_context(&ctx.attrs(node)?, &crate::userdb::Nss)
            .map_err(|m| ctx.err(node, m))?;
        for c in node.children() {
            if c.is_element() {
                let allow = match c.tag_name().name() {
                    "allow" if c.tag_name().namespace().is_none() => true,
                    "deny" if c.tag_name().namespace().is_none() => false,
                    other => {
                        return Err(ctx.err(
                            c,
                            format!(
                            "Element <{other}> not allowed inside <policy> in configuration file"
                        ),
                        ))
                    }
                };
                let rule = policy::parse_rule(allow, &ctx.attrs(c)?, &crate::userdb::Nss)
                    .map_err(|m| ctx.err(c, m))?;
                ctx.empty(c)?;
                if let Some(rule) = rule {
                    st.policy.add(pctx, rule).map_err(|m| ctx.err(c, m))?;
                }
            } else if c.is_text() && !c.text().unwrap_or("").trim().is_empty() {
                return Err(ctx.err(
                    node,
                    "No text content expected inside XML element policy in configuration file",
                ));
            }
        }
        Ok(())
    }

    /// Parse `path` into `st`. Errors inside the file are reported against that file.
    fn include_file(
        &mut self,
        st: &mut State,
        ctx: &FileCtx,
        node: roxmltree::Node,
        path: &Path,
        ignore_missing: bool,
    ) -> Result<(), ConfigError> {
        if let Some(dir) = path.parent() {
            self.watch(dir);
        }
        let key = canonical(path);
        if self.stack.contains(&key) {
            return Err(ctx.err(node, ConfigProblem::CircularInclude(path.to_path_buf())));
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(ctx.err(node, ConfigProblem::IncludesTooDeep(path.to_path_buf())));
        }
        let text = match read_file(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && ignore_missing => return Ok(()),
            Err(e) => return Err(ctx.err(node, ConfigProblem::open(path, &e))),
        };
        self.stack.push(key);
        let r = self.load_text(st, path, &text);
        self.stack.pop();
        r
    }

    /// Every `*.conf` in `dir`, in byte order of the names. A missing directory is fine; a file
    /// that fails is logged and contributes nothing (dbus-daemon behaves the same).
    fn include_dir(
        &mut self,
        st: &mut State,
        ctx: &FileCtx,
        node: roxmltree::Node,
        dir: &Path,
    ) -> Result<(), ConfigError> {
        self.watch(dir);
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(ctx.err(
                    node,
                    ConfigProblem::OpenDir {
                        path: dir.to_path_buf(),
                        error: e.to_string(),
                    },
                ))
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.as_os_str().as_encoded_bytes().ends_with(b".conf"))
            .collect();
        files.sort();
        for f in files {
            let mut sub = st.clone();
            match self.include_file(&mut sub, ctx, node, &f, true) {
                Ok(()) => *st = sub,
                Err(e) => log::warn!("Encountered error '{e}' while parsing '{}'", f.display()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod nesting_tests {
    use super::nesting_exceeds;

    #[test]
    fn nesting_scan() {
        assert_eq!(nesting_exceeds("<a><b/><c>x</c></a>", 2), None);
        assert_eq!(nesting_exceeds("<a>\n<b>\n<c></c></b></a>", 2), Some(3));
        assert_eq!(
            nesting_exceeds("<a x='>'><!-- <b><c><d> --><b/></a>", 1),
            None
        );
        let deep = "<a>".repeat(1000);
        assert!(nesting_exceeds(&deep, 32).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::policy::MsgFacts;
    use std::sync::Mutex;

    /// Serializes tests that read or change the XDG environment.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    const TEST_DATA: &str = "/usr/lib/dbus-1.0/installed-tests/dbus/data";

    fn test_file(rel: &str) -> Option<PathBuf> {
        let p = Path::new(TEST_DATA).join(rel);
        if p.exists() {
            Some(p)
        } else {
            eprintln!("skipping: {} not installed", p.display());
            None
        }
    }

    fn conf_files(dir: &str) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(Path::new(TEST_DATA).join(dir)) else {
            eprintln!("skipping: {dir} not installed");
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        v.sort();
        v
    }

    /// A fresh scratch directory.
    fn scratch(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "sluicebus-config-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn parse(xml: &str) -> Result<Config, ConfigError> {
        load_from_str(xml, Path::new("/nonexistent/test.conf"))
    }

    fn call<'a>(iface: Option<&'a str>, member: &'a str) -> MsgFacts<'a> {
        MsgFacts {
            msg_type: 1,
            interface: iface,
            member: Some(member),
            path: Some("/"),
            has_destination: true,
            ..Default::default()
        }
    }

    #[test]
    fn stock_configs_load() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for f in [SESSION_CONFIG_FILE, SYSTEM_CONFIG_FILE] {
            if !Path::new(f).exists() {
                eprintln!("skipping {f}");
                continue;
            }
            let c = load(Path::new(f)).unwrap_or_else(|e| panic!("{e}"));
            c.validate_has_listen().unwrap();
        }
        if let Ok(c) = load(Path::new(SYSTEM_CONFIG_FILE)) {
            assert_eq!(c.bus_type.as_deref(), Some("system"));
            assert_eq!(c.user.as_deref(), Some("messagebus"));
            assert!(c.fork && c.syslog);
            assert_eq!(c.pidfile.as_deref(), Some(Path::new("/run/dbus/pid")));
            assert_eq!(c.listen, ["unix:path=/run/dbus/system_bus_socket"]);
            assert_eq!(
                c.servicehelper.as_deref(),
                Some(Path::new("/usr/lib/dbus-1.0/dbus-daemon-launch-helper"))
            );
            assert_eq!(
                c.servicedirs,
                [
                    "/usr/local/share/dbus-1/system-services",
                    "/usr/share/dbus-1/system-services",
                    "/lib/dbus-1/system-services"
                ]
                .map(PathBuf::from)
            );
            assert_eq!(c.limits, Limits::default());
        }
    }

    #[test]
    fn all_valid_test_configs_load() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for dir in [
            "valid-config-files",
            "valid-config-files-system",
            "valid-config-files/basic.d",
            "valid-config-files-system/system.d",
            "equiv-config-files/basic",
            "equiv-config-files/entities",
        ] {
            for f in conf_files(dir) {
                load(&f).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        if n > 0 {
            assert!(n >= 35, "only {n} files");
        }
    }

    #[test]
    fn all_invalid_test_configs_fail() {
        for f in conf_files("invalid-config-files") {
            let r = load(&f);
            assert!(r.is_err(), "{} loaded", f.display());
            let msg = r.unwrap_err().to_string();
            assert!(
                msg.starts_with(&*f.to_string_lossy()) || msg.contains("circular"),
                "{msg}"
            );
        }
    }

    #[test]
    fn session_conf_limits_exact() {
        let Some(f) = test_file("valid-config-files/session.conf") else {
            return;
        };
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let c = load(&f).unwrap();
        let l = &c.limits;
        assert_eq!(l.max_incoming_bytes, 1_000_000_000);
        assert_eq!(l.max_incoming_unix_fds, 250_000_000);
        assert_eq!(l.max_outgoing_bytes, 1_000_000_000);
        assert_eq!(l.max_outgoing_unix_fds, 250_000_000);
        assert_eq!(l.max_message_size, 1_000_000_000);
        assert_eq!(l.max_message_unix_fds, 16);
        assert_eq!(l.service_start_timeout, 120_000);
        assert_eq!(l.auth_timeout, 240_000);
        assert_eq!(l.pending_fd_timeout, 150_000);
        assert_eq!(l.max_completed_connections, 100_000);
        assert_eq!(l.max_incomplete_connections, 10_000);
        assert_eq!(l.max_connections_per_user, 100_000);
        assert_eq!(l.max_pending_service_starts, 10_000);
        assert_eq!(l.max_names_per_connection, 50_000);
        assert_eq!(l.max_match_rules_per_connection, 50_000);
        assert_eq!(l.max_replies_per_connection, 50_000);
        assert_eq!(l.reply_timeout, None);
        assert_eq!(c.bus_type.as_deref(), Some("session"));
        assert!(c.keep_umask && !c.fork && !c.syslog && !c.allow_anonymous);
        assert_eq!(c.auth, ["EXTERNAL"]);
        assert_eq!(c.listen, ["unix:tmpdir=/tmp"]);
        assert!(c.policy.for_connection(Some(1000), &[]).allows_everything());
        // The stock file has the same limits.
        if let Ok(stock) = load(Path::new(SESSION_CONFIG_FILE)) {
            assert_eq!(stock.limits, c.limits);
        }
        let small =
            load(&Path::new(TEST_DATA).join("valid-config-files/finite-timeout.conf")).unwrap();
        assert_eq!(small.limits.reply_timeout, Some(100));
        let small =
            load(&Path::new(TEST_DATA).join("valid-config-files/max-containers.conf")).unwrap();
        assert_eq!(small.limits.max_containers, 3);
    }

    #[test]
    fn builtin_session_matches_stock() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let c = builtin_session();
        assert_eq!(c.bus_type.as_deref(), Some("session"));
        assert_eq!(c.auth, ["EXTERNAL"]);
        assert!(c.keep_umask);
        assert!(c.policy.for_connection(Some(1000), &[]).allows_everything());
        assert_eq!(c.limits.max_message_size, 1_000_000_000);
        assert_eq!(c.limits.max_replies_per_connection, 50_000);
        let runtime = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|v| !v.is_empty());
        let expect = if runtime {
            "unix:runtime=yes"
        } else {
            "unix:tmpdir=/tmp"
        };
        assert_eq!(c.listen, [expect]);
        assert!(c
            .servicedirs
            .contains(&PathBuf::from("/usr/share/dbus-1/services")));
        if let Ok(stock) = load(Path::new(SESSION_CONFIG_FILE)) {
            assert_eq!(stock.limits, c.limits);
            assert_eq!(stock.servicedirs, c.servicedirs);
        }
    }

    #[test]
    fn standard_session_dirs_follow_environment() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let saved: Vec<_> = ["XDG_RUNTIME_DIR", "XDG_DATA_HOME", "XDG_DATA_DIRS", "HOME"]
            .iter()
            .map(|k| (*k, std::env::var_os(k)))
            .collect();
        std::env::set_var("XDG_RUNTIME_DIR", "/run/user/42");
        std::env::set_var("XDG_DATA_HOME", "/h/data");
        std::env::set_var("XDG_DATA_DIRS", "/a:/usr/share::/b");
        let c = parse(
            "<busconfig><servicedir>/first</servicedir><standard_session_servicedirs/></busconfig>",
        )
        .unwrap();
        let with_rt = c.servicedirs.clone();
        std::env::remove_var("XDG_RUNTIME_DIR");
        std::env::remove_var("XDG_DATA_HOME");
        std::env::remove_var("XDG_DATA_DIRS");
        std::env::set_var("HOME", "/home/u");
        let c2 = parse("<busconfig><standard_session_servicedirs/></busconfig>").unwrap();
        let b = builtin_session();
        for (k, v) in saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
        assert_eq!(
            with_rt,
            [
                "/first",
                "/run/user/42/dbus-1/services",
                "/h/data/dbus-1/services",
                "/a/dbus-1/services",
                "/usr/share/dbus-1/services",
                "/b/dbus-1/services"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            c2.servicedirs,
            [
                "/home/u/.local/share/dbus-1/services",
                "/usr/local/share/dbus-1/services",
                "/usr/share/dbus-1/services"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(b.listen, ["unix:tmpdir=/tmp"]);
    }

    #[test]
    fn basic_and_entities() {
        let Some(f) = test_file("valid-config-files/basic.conf") else {
            return;
        };
        let c = load(&f).unwrap();
        assert_eq!(c.user.as_deref(), Some("mybususer"));
        // basic.d/basic.conf repeats the two listens.
        assert_eq!(
            c.listen,
            [
                "unix:path=/foo/bar",
                "tcp:port=1234",
                "unix:path=/foo/bar",
                "tcp:port=1234"
            ]
        );
        assert_eq!(c.servicedirs, [PathBuf::from("/usr/share/foo")]);
        assert_eq!(c.limits.max_message_size, 300);
        assert_eq!(c.limits.auth_timeout, 6000);
        assert_eq!(c.limits.max_names_per_connection, 256);
        assert!(c.policy.allows_connect(Some(12345), &[], 0));
        let e = load(&Path::new(TEST_DATA).join("valid-config-files/entities.conf")).unwrap();
        assert_eq!(e.listen[0], "unix:path=/foo/<bar>");
        assert!(e.servicedirs.contains(&PathBuf::from("/usr/&share/foo")));
        assert!(e.policy.allows_connect(Some(12345), &[], 0));
        // entities.conf includes basic.d via &#100;.
        assert_eq!(e.listen.len(), 4);
    }

    #[test]
    fn unknown_element_reports_line() {
        let e = parse("<busconfig>\n  <listen>tcp:port=1</listen>\n\n  <bees/>\n</busconfig>")
            .unwrap_err();
        assert_eq!(e.line, 4);
        assert_eq!(e.element, "bees");
        assert_eq!(e.file, PathBuf::from("/nonexistent/test.conf"));
        let s = e.to_string();
        assert!(
            s.starts_with("/nonexistent/test.conf:4: bees: Element <bees> not allowed"),
            "{s}"
        );
    }

    #[test]
    fn strictness() {
        let bad = [
            "<notbusconfig/>",
            "<busconfig x=\"1\"/>",
            "<busconfig>text</busconfig>",
            "<busconfig><listen carefully=\"yes\">tcp:port=1</listen></busconfig>",
            "<busconfig><listen></listen></busconfig>",
            "<busconfig><listen>  </listen></busconfig>",
            "<busconfig><listen><x/></listen></busconfig>",
            "<busconfig><fork>now</fork></busconfig>",
            "<busconfig><fork><x/></fork></busconfig>",
            "<busconfig><limit>5</limit></busconfig>",
            "<busconfig><limit name=\"max_bees\">5</limit></busconfig>",
            "<busconfig><limit name=\"auth_timeout\">-1</limit></busconfig>",
            "<busconfig><limit name=\"auth_timeout\">3123123123</limit></busconfig>",
            "<busconfig><limit name=\"auth_timeout\">bees</limit></busconfig>",
            "<busconfig><limit name=\"auth_timeout\">99999999999999999999999</limit></busconfig>",
            "<busconfig><limit name=\"auth_timeout\" x=\"y\">5</limit></busconfig>",
            "<busconfig><policy/></busconfig>",
            "<busconfig><policy context=\"default\"><grant/></policy></busconfig>",
            "<busconfig><policy context=\"default\"><allow/></policy></busconfig>",
            "<busconfig><policy context=\"default\">words</policy></busconfig>",
            "<busconfig><policy context=\"default\"><allow own=\"x\">t</allow></policy></busconfig>",
            "<busconfig><policy user=\"root\"><allow user=\"*\"/></policy></busconfig>",
            "<busconfig><include>x</include><include bogus=\"1\">y</include></busconfig>",
            "<busconfig><include ignore_missing=\"maybe\">x</include></busconfig>",
            "<busconfig><include selinux_root_relative=\"yes\">x</include></busconfig>",
            "<busconfig><include>/nonexistent/sluicebus/missing.conf</include></busconfig>",
            "<busconfig><includedir>/etc/hostname</includedir></busconfig>",
            "<busconfig><selinux><associate own=\"a\"/></selinux></busconfig>",
            "<busconfig><selinux><other/></selinux></busconfig>",
            "<busconfig><apparmor mode=\"plaintive\"/></busconfig>",
            "<busconfig><apparmor enforcement_style=\"Judge Dredd\"/></busconfig>",
            "<busconfig><user>a</foo></busconfig>",
            "<busconfig><user>a</user>",
            "<busconfig xmlns:q=\"urn:x\"><q:listen>a</q:listen></busconfig>",
        ];
        for xml in bad {
            assert!(parse(xml).is_err(), "accepted: {xml}");
        }
        let ok = parse(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><!-- c --><listen> unix:path=/x<!-- mid --> </listen>\
             <limit name=\"reply_timeout\"> 7 </limit><apparmor mode=\"required\"/><apparmor/>\
             <include if_selinux_enabled=\"yes\" selinux_root_relative=\"yes\">contexts/dbus_contexts</include>\
             <include ignore_missing=\"yes\">/nonexistent/sluicebus/missing.conf</include>\
             <includedir>/nonexistent/sluicebus/dir.d</includedir>\
             <selinux><associate own=\"a\" context=\"b\"/></selinux><allow_anonymous/>\
             <servicedir>rel/dir</servicedir><servicedir>/nonexistent/rel/dir</servicedir>\
             <servicehelper>helper</servicehelper></busconfig>",
        )
        .unwrap();
        assert_eq!(ok.listen, ["unix:path=/x"]);
        assert_eq!(ok.limits.reply_timeout, Some(7));
        assert!(ok.allow_anonymous);
        assert_eq!(
            ok.servicedirs,
            [PathBuf::from("/nonexistent/rel/dir")],
            "deduplicated"
        );
        assert_eq!(ok.servicehelper, Some(PathBuf::from("/nonexistent/helper")));
        let no_listen = parse("<busconfig/>").unwrap();
        let e = no_listen.validate_has_listen().unwrap_err();
        assert!(e.to_string().contains("<listen>"));
        assert!(ok.validate_has_listen().is_ok());
    }

    #[test]
    fn include_relative_missing_and_ignore_missing() {
        let d = scratch("inc");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(
            d.join("main.conf"),
            "<busconfig>\n<listen>a</listen>\n<include>sub/inner.conf</include>\n<listen>c</listen>\n\
             <limit name=\"max_names_per_connection\">9</limit>\n</busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("sub/inner.conf"),
            "<busconfig><listen>b</listen><servicedir>svc</servicedir>\
             <limit name=\"max_match_rules_per_connection\">3</limit><type>t</type></busconfig>",
        )
        .unwrap();
        let c = load(&d.join("main.conf")).unwrap();
        assert_eq!(c.listen, ["a", "b", "c"]);
        assert_eq!(
            c.servicedirs,
            [d.join("sub/svc")],
            "relative to the including file"
        );
        assert_eq!(c.limits.max_match_rules_per_connection, 3);
        assert_eq!(c.limits.max_names_per_connection, 9);
        assert_eq!(c.bus_type.as_deref(), Some("t"));

        fs::write(
            d.join("missing.conf"),
            "<busconfig>\n\n<include>nope.conf</include></busconfig>",
        )
        .unwrap();
        let e = load(&d.join("missing.conf")).unwrap_err();
        assert_eq!((e.line, e.element.as_str()), (3, "include"));
        assert!(e.message.to_string().contains("nope.conf"), "{e}");
        fs::write(
            d.join("ignored.conf"),
            "<busconfig><include ignore_missing=\"yes\">nope.conf</include></busconfig>",
        )
        .unwrap();
        load(&d.join("ignored.conf")).unwrap();
        // ignore_missing does not hide errors inside an existing file.
        fs::write(d.join("broken.conf"), "<busconfig><bees/></busconfig>").unwrap();
        fs::write(
            d.join("uses-broken.conf"),
            "<busconfig><include ignore_missing=\"yes\">broken.conf</include></busconfig>",
        )
        .unwrap();
        let e = load(&d.join("uses-broken.conf")).unwrap_err();
        assert_eq!(e.file, d.join("broken.conf"));
        assert_eq!(e.element, "bees");
        let e = load(&d.join("does-not-exist.conf")).unwrap_err();
        assert_eq!(e.line, 0);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn include_cycles_are_errors() {
        let d = scratch("cycle");
        fs::write(
            d.join("self.conf"),
            "<busconfig><include>self.conf</include></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("a.conf"),
            "<busconfig><include>b.conf</include></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("b.conf"),
            "<busconfig><include>./a.conf</include></busconfig>",
        )
        .unwrap();
        for f in ["self.conf", "a.conf", "b.conf"] {
            let e = load(&d.join(f)).unwrap_err();
            assert!(e.message.to_string().contains("Circular inclusion"), "{e}");
            assert_eq!(e.element, "include");
        }
        // Including the same file twice (not nested) is fine.
        fs::write(
            d.join("leaf.conf"),
            "<busconfig><listen>x</listen></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("twice.conf"),
            "<busconfig><include>leaf.conf</include><include>leaf.conf</include></busconfig>",
        )
        .unwrap();
        assert_eq!(load(&d.join("twice.conf")).unwrap().listen, ["x", "x"]);
        if let Some(f) = test_file("invalid-config-files/circular-2.conf") {
            assert!(matches!(
                load(&f).unwrap_err().message,
                ConfigProblem::CircularInclude(_)
            ));
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn includedir_sorted_and_broken_files_skipped() {
        let d = scratch("incdir");
        fs::create_dir_all(d.join("conf.d")).unwrap();
        fs::write(
            d.join("conf.d/b.conf"),
            "<busconfig><listen>b</listen></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("conf.d/a.conf"),
            "<busconfig><listen>a</listen></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("conf.d/c.conf"),
            "<busconfig><listen>c</listen><bees/></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("conf.d/d.txt"),
            "<busconfig><listen>d</listen></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("main.conf"),
            "<busconfig><includedir>conf.d</includedir></busconfig>",
        )
        .unwrap();
        let c = load(&d.join("main.conf")).unwrap();
        assert_eq!(
            c.listen,
            ["a", "b"],
            "sorted, broken c.conf dropped whole, d.txt ignored"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn unsupported_auth_mechanism() {
        let msg = "Unsupported auth mechanism \"EXTRENAL\" in bus config file detected. \
                   Supported mechanisms are \"EXTERNAL, DBUS_COOKIE_SHA1, ANONYMOUS\".";
        let e = parse(
            "<busconfig>\n<auth>EXTERNAL</auth>\n<auth>EXTRENAL</auth>\n<auth>x</auth></busconfig>",
        )
        .unwrap_err();
        assert_eq!(e.message.to_string(), msg);
        assert_eq!(
            (e.line, e.element.as_str()),
            (3, "auth"),
            "the first bad one"
        );
        // Mechanism names are case-sensitive, as in dbus-daemon.
        assert!(parse("<busconfig><auth>external</auth></busconfig>").is_err());
        for ok in ["EXTERNAL", "DBUS_COOKIE_SHA1", "ANONYMOUS"] {
            let c = parse(&format!("<busconfig><auth>{ok}</auth></busconfig>")).unwrap();
            assert_eq!(c.auth, [ok]);
        }
        // dbus-daemon checks the merged list, so a file in an <includedir> is not skipped
        // for it the way a malformed one is.
        let d = scratch("authdir");
        fs::create_dir_all(d.join("conf.d")).unwrap();
        fs::write(
            d.join("conf.d/a.conf"),
            "<busconfig><auth>EXTRENAL</auth></busconfig>",
        )
        .unwrap();
        fs::write(
            d.join("main.conf"),
            "<busconfig><includedir>conf.d</includedir></busconfig>",
        )
        .unwrap();
        let e = load(&d.join("main.conf")).unwrap_err();
        assert_eq!(e.message.to_string(), msg);
        assert_eq!(e.file, d.join("conf.d/a.conf"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_limit_files() {
        for f in [
            "bad-limit.conf",
            "negative-limit.conf",
            "ludicrous-limit.conf",
            "unknown-limit.conf",
            "non-numeric-limit.conf",
            "limit-no-name.conf",
        ] {
            let Some(p) = test_file(&format!("invalid-config-files/{f}")) else {
                return;
            };
            let e = load(&p).unwrap_err();
            assert_eq!(e.element, "limit", "{f}: {e}");
            assert!(e.line >= 2, "{f}: {e}");
        }
    }

    #[test]
    fn system_conf_policy() {
        let Some(f) = test_file("valid-config-files-system/system.conf") else {
            return;
        };
        let c = load(&f).unwrap();
        let p = &c.policy;
        assert!(p.allows_connect(Some(1000), &[1000], 0), "allow user=*");
        let user = p.for_connection(Some(1000), &[1000]);
        let root = p.for_connection(Some(0), &[0]);
        let drv = ["org.freedesktop.DBus"];
        let d = Some("org.freedesktop.DBus");
        assert!(user.can_send(&call(Some("org.freedesktop.DBus"), "Hello"), &drv, d));
        assert!(user.can_send(
            &call(Some("org.freedesktop.DBus.Properties"), "Get"),
            &drv,
            d
        ));
        assert!(!user.can_send(
            &call(Some("org.freedesktop.DBus"), "UpdateActivationEnvironment"),
            &drv,
            d
        ));
        assert!(!root.can_send(
            &call(Some("org.freedesktop.DBus"), "UpdateActivationEnvironment"),
            &drv,
            d
        ));
        assert!(!user.can_send(
            &call(Some("org.freedesktop.DBus.Monitoring"), "BecomeMonitor"),
            &drv,
            d
        ));
        assert!(root.can_send(
            &call(Some("org.freedesktop.DBus.Monitoring"), "BecomeMonitor"),
            &drv,
            d
        ));
        assert!(!user.can_send(
            &call(Some("org.freedesktop.DBus.Debug.Stats"), "GetStats"),
            &drv,
            d
        ));
        assert!(root.can_send(
            &call(Some("org.freedesktop.DBus.Debug.Stats"), "GetStats"),
            &drv,
            d
        ));
        assert!(!user.can_send(
            &call(Some("org.freedesktop.systemd1.Activator"), "X"),
            &drv,
            d
        ));
        assert!(root.can_send(
            &call(Some("org.freedesktop.systemd1.Activator"), "X"),
            &drv,
            d
        ));
        // Driver call without interface: allow rules with send_interface do not match.
        assert!(!user.can_send(&call(None, "Hello"), &drv, d));
        // Method calls to services are denied by default, for root too.
        let svc = [":1.7", "com.example.Svc"];
        assert!(!user.can_send(
            &call(Some("com.example.Svc"), "M"),
            &svc,
            Some("com.example.Svc")
        ));
        assert!(!root.can_send(
            &call(Some("com.example.Svc"), "M"),
            &svc,
            Some("com.example.Svc")
        ));
        let sig = MsgFacts {
            msg_type: 4,
            interface: Some("a.b"),
            member: Some("S"),
            path: Some("/"),
            ..Default::default()
        };
        assert!(user.can_send(&sig, &[":1.7"], None));
        let ret = MsgFacts {
            msg_type: 2,
            has_destination: true,
            ..Default::default()
        };
        assert!(!user.can_send(&ret, &[":1.7"], Some(":1.7")));
        assert!(user.can_send(
            &MsgFacts {
                requested_reply: true,
                ..ret
            },
            &[":1.7"],
            Some(":1.7")
        ));
        assert!(user.can_receive(&call(Some("x.Y"), "M"), &[":1.7"]));
        assert!(!user.allows_all_messages());
        // Ownership: nobody owns arbitrary names; system.d/test.conf lets root own FooService.
        assert!(!root.can_own("com.example.Anything"));
        assert!(!user.can_own("com.example.Anything"));
        assert!(root.can_own("org.foo.FooService"));
        assert!(!user.can_own("org.foo.FooService"));
        // test.conf: root may send FooBroadcastInterface method calls; others may not.
        let foo = call(Some("org.foo.FooBroadcastInterface"), "M");
        assert!(root.can_send(&foo, &[":1.9"], Some(":1.9")));
        assert!(!user.can_send(&foo, &[":1.9"], Some(":1.9")));
    }

    #[test]
    fn send_destination_prefix_rules() {
        let Some(f) = test_file("valid-config-files/send-destination-prefix-rules.conf") else {
            return;
        };
        let c = load(&f).unwrap();
        let pol = c.policy.for_connection(Some(1000), &[]);
        let base = "foo.bar.test.dest_prefix";
        let m = call(Some("foo.bar.Iface"), "Call");
        let can = |suffix: &str, m: &MsgFacts| {
            let name = format!("{base}.{suffix}");
            pol.can_send(m, &[":1.1", name.as_str()], Some(name.as_str()))
        };
        for (s, ok) in [
            ("ap", true),
            ("ap.x", true),
            ("apx", false),
            ("ao", true),
            ("ao.ao", true),
            ("ao.x", false),
            ("ap.f1.d", false),
            ("ap.f1.d.ap", true),
            ("ap.f1.d.ap.x", true),
            ("ap.f1.dp", false),
            ("ap.f1.dp.x", false),
            ("ap.f1.dp.a", true),
            ("ap.f1.dp.ap", true),
            ("ap.f2.apxdp", false),
            ("ap.f2.apxdp.dp.ap", false),
            ("ap.f2.apxdp.dp.a", true),
            ("ap.f2.apxdp.dp.ap.f.a", true),
            ("ap.f2.apxdp.f.f.f.ap.x", true),
            ("ap.f3.dpxap.ap.dp", true),
            ("ap.f3.dpxap.ap.dp.ap.x", true),
            ("dp", false),
            ("dp.x", false),
            ("do", false),
            ("do.f.f", false),
            ("dp.f1.a", true),
            ("dp.f1.a.dp", false),
            ("dp.f1.ap", true),
            ("dp.f1.ap.x", true),
            ("dp.f1.ap.d", false),
            ("dp.f1.ap.dp.x", false),
            ("dp.f2.dpxap", true),
            ("dp.f2.dpxap.ap.d", false),
            ("dp.f2.dpxap.ap.dp.a", true),
            ("dp.f2.dpxap.f.f.f.dp", false),
            ("dp.f3.apxdp.ap", false),
            ("dp.f3.apxdp.dp.ap", false),
        ] {
            assert_eq!(can(s, &m), ok, "{s}");
        }
        // Other names under foo.bar.test are denied; unrelated names hit the method_call deny.
        assert!(!pol.can_send(&m, &[":1.1", "foo.bar.test.x"], None));
        assert!(!pol.can_send(&m, &[":1.1", "com.example"], None));
        // Interface/member refinements.
        assert!(!can("ap.m", &call(Some("foo.bar.a"), "CallDeny")));
        assert!(can("ap.m", &call(Some("foo.bar.a"), "Other")));
        assert!(can("ap.m", &call(Some("foo.bar.d"), "CallAllow")));
        assert!(!can("ap.m", &call(Some("foo.bar.d"), "Other")));
        assert!(can("dp.m", &call(Some("foo.bar.a"), "Call")));
        assert!(!can("dp.m", &call(Some("foo.bar.a"), "CallDeny")));
        assert!(can("dp.m", &call(Some("foo.bar.d"), "CallAllow")));
        assert!(!can("dp.m", &call(Some("foo.bar.d"), "Other")));
        // A connection owning several names: a rule matches if any owned name matches, and the
        // last matching rule wins whatever the order of the names (here the later base deny).
        let both = [
            ":1.1",
            "foo.bar.test.dest_prefix.dp",
            "foo.bar.test.dest_prefix.ap",
        ];
        assert!(!pol.can_send(&m, &both, None));
        let both = [
            ":1.1",
            "foo.bar.test.dest_prefix.ap",
            "foo.bar.test.dest_prefix.dp",
        ];
        assert!(!pol.can_send(&m, &both, None));
        let both = [
            ":1.1",
            "foo.bar.test.dest_prefix.dp",
            "foo.bar.test.dest_prefix.dp.f1.a",
        ];
        assert!(pol.can_send(&m, &both, None));
        assert!(pol.can_own("foo.bar.test.dest_prefix.anything"));
        assert!(!pol.can_own("foo.bar.test.other"));
    }

    #[test]
    fn forbidding_conf() {
        let Some(f) = test_file("valid-config-files/forbidding.conf") else {
            return;
        };
        let c = load(&f).unwrap();
        let pol = c.policy.for_connection(Some(1000), &[]);
        let peer = [":1.5"];
        let sig = |iface: &'static str, unicast: bool| MsgFacts {
            msg_type: 4,
            interface: Some(iface),
            member: Some("Sig"),
            path: Some("/"),
            has_destination: unicast,
            ..Default::default()
        };
        assert!(!pol.can_send(
            &call(Some("com.example.CannotSend"), "M"),
            &peer,
            Some(":1.5")
        ));
        assert!(pol.can_send(&call(Some("com.example.Other"), "M"), &peer, Some(":1.5")));
        for i in [
            "com.example.CannotBroadcast",
            "com.example.CannotBroadcast2",
        ] {
            assert!(!pol.can_send(&sig(i, false), &peer, None), "{i}");
            assert!(pol.can_send(&sig(i, true), &peer, Some(":1.5")), "{i}");
        }
        for i in ["com.example.CannotUnicast", "com.example.CannotUnicast2"] {
            assert!(pol.can_send(&sig(i, false), &peer, None), "{i}");
            assert!(!pol.can_send(&sig(i, true), &peer, Some(":1.5")), "{i}");
        }
        assert!(!pol.can_receive(&sig("com.example.CannotReceive", true), &peer));
        assert!(pol.can_receive(&sig("com.example.Fine", true), &peer));
        let acquired = MsgFacts {
            member: Some("NameAcquired"),
            ..sig("org.freedesktop.DBus", true)
        };
        assert!(!pol.can_receive(&acquired, &["org.freedesktop.DBus"]));
        let lost = MsgFacts {
            member: Some("NameLost"),
            ..acquired
        };
        assert!(pol.can_receive(&lost, &["org.freedesktop.DBus"]));
        // Without eavesdrop="true" eavesdropped copies are refused.
        assert!(!pol.can_receive(
            &MsgFacts {
                eavesdrop: true,
                ..sig("com.example.Fine", true)
            },
            &peer
        ));
        assert!(pol.can_own("any.name"));
        assert!(!pol.allows_all_messages());
    }

    #[test]
    fn multi_user_conf() {
        let Some(f) = test_file("valid-config-files/multi-user.conf") else {
            return;
        };
        let c = load(&f).unwrap();
        assert_eq!(c.servicehelper, Some(PathBuf::from("/bin/false")));
        for uid in [0, 1000, 65534] {
            assert!(c.policy.allows_connect(Some(uid), &[], 0), "{uid}");
        }
        let pol = c.policy.for_connection(Some(65534), &[]);
        assert!(pol.can_send(&call(Some("a.b"), "M"), &[":1.1"], None));
        assert!(
            pol.can_send(&call(None, "M"), &[":1.1"], None),
            "send_interface=\"*\" is a wildcard"
        );
        assert!(pol.can_receive(&call(None, "M"), &[":1.1"]));
        assert!(pol.can_own("com.example.Any"));
        // minimal.conf has no policy: only the daemon's uid connects, nothing is allowed.
        if let Some(m) = test_file("valid-config-files/minimal.conf") {
            let m = load(&m).unwrap();
            assert!(m.policy.allows_connect(Some(7), &[], 7));
            assert!(!m.policy.allows_connect(Some(8), &[], 7));
            assert!(!m.policy.for_connection(Some(7), &[]).can_send(
                &call(Some("a.b"), "M"),
                &[":1.1"],
                None
            ));
        }
    }

    #[test]
    fn many_rules_system_connect_rules() {
        let Some(f) = test_file("valid-config-files-system/many-rules.conf") else {
            return;
        };
        let c = load(&f).unwrap();
        let p = &c.policy;
        assert!(p.needs_groups());
        assert!(!p.allows_connect(Some(0), &[0], 0), "deny user=root");
        assert!(!p.allows_connect(Some(1000), &[2], 0), "deny group=bin");
        assert!(p.allows_connect(Some(1000), &[1000], 0));
        let pol = p.for_connection(Some(1000), &[1000]);
        assert!(!pol.can_own("org.freedesktop.ManySystems.x"));
        // The Reboot deny is overridden by the later allow send_type="method_call".
        assert!(pol.can_send(
            &call(Some("org.freedesktop.System"), "Reboot"),
            &[":1.1"],
            None
        ));
        let bar = [":1.1", "org.freedesktop.Bar"];
        assert!(!pol.can_send(&call(Some("org.freedesktop.Foo"), "M"), &bar, None));
        assert!(pol.can_send(&call(Some("org.freedesktop.Baz"), "M"), &bar, None));
    }
}
