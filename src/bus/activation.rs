//! Service activation data, sans process spawning: `.service` file parsing, the
//! activatable-name table over the configured service directories, `Exec` line splitting,
//! and the environment handed to activated services (the D-Bus specification's "Message
//! Bus Starting Services (Activation)" section).
//!
//! The table reads the directories through [`ServiceFs`], which the reactor implements over
//! the real filesystem. Starting a service and holding the messages that wait for it is
//! [`super::service_start`]'s job; the spawning itself is an [`super::Effect::Spawn`] the
//! reactor carries out.

use crate::wire::names::is_valid_well_known_name;
use ahash::AHashMap;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

/// What the service-file table needs of a filesystem: the reactor's reads the real one, a
/// test's can be a map.
pub trait ServiceFs {
    /// The names of the entries of directory `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Kind, size and modification time of `path`, following symbolic links.
    fn stat(&self, path: &Path) -> io::Result<FileStamp>;
    /// The whole contents of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
}

/// What [`ServiceFs::stat`] tells about a file: enough to notice that it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// A regular file (not a directory, socket...).
    pub is_file: bool,
    /// Size in bytes.
    pub len: u64,
    /// Last modification, if the filesystem records it.
    pub modified: Option<SystemTime>,
}

/// The keyfile group that holds a service description.
pub const SERVICE_GROUP: &str = "D-BUS Service";

/// Largest service file accepted, in bytes (dbus-daemon's limit too).
pub const MAX_SERVICE_FILE_SIZE: u64 = 128 * 1024;

/// Suffix every service file name must have to be considered.
pub const SERVICE_FILE_SUFFIX: &str = ".service";

/// One parsed `.service` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFile {
    /// `Name`: the well-known bus name the service provides.
    pub name: String,
    /// `Exec`: the command line for traditional activation (unsplit; see [`parse_exec`]).
    /// Required even beside a `SystemdService`, as dbus-daemon requires it (packages write
    /// `Exec=/bin/false` for services only systemd starts).
    pub exec: String,
    /// `User`: the account to run as (required for system-bus activation via the helper).
    pub user: Option<String>,
    /// `SystemdService`: the unit systemd should start under `--systemd-activation`.
    pub systemd_service: Option<String>,
    /// `AssumedAppArmorLabel`: the label policy checks assume before the service runs.
    pub assumed_apparmor_label: Option<String>,
    /// Where the file was read from.
    pub path: PathBuf,
    /// The file's modification time when it was read (`None` if parsed from text only).
    pub mtime: Option<SystemTime>,
}

impl ServiceFile {
    /// The canonical file name for this service: `<Name>.service`.
    pub fn expected_file_name(&self) -> String {
        format!("{}{}", self.name, SERVICE_FILE_SUFFIX)
    }

    /// Extra requirement of system-bus activation through the setuid helper: `User` must be
    /// present. dbus-daemon lists such files anyway and fails their activation
    /// (Spawn.FileInvalid), so the table keeps them and the activation code calls this.
    pub fn check_system_bus(&self) -> Result<(), ServiceFileError> {
        if self.user.is_none() {
            return Err(ServiceFileError::MissingKey("User"));
        }
        Ok(())
    }

    /// Equal apart from the modification time (a touched but unchanged file is no change).
    fn same_content(&self, other: &ServiceFile) -> bool {
        self.name == other.name
            && self.exec == other.exec
            && self.user == other.user
            && self.systemd_service == other.systemd_service
            && self.assumed_apparmor_label == other.assumed_apparmor_label
            && self.path == other.path
    }
}

/// Why a service file was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFileError {
    /// The file could not be read (or is not a regular file).
    Io(String),
    /// The file is larger than [`MAX_SERVICE_FILE_SIZE`].
    TooLarge(u64),
    /// The file is not valid UTF-8.
    NotUtf8,
    /// Keyfile syntax error at a 1-based line.
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: &'static str,
    },
    /// There is no `[D-BUS Service]` group.
    MissingGroup,
    /// A required key is absent.
    MissingKey(&'static str),
    /// `Name` is not a valid well-known bus name.
    InvalidName(String),
    /// In a strict-naming directory the file must be called `<Name>.service`.
    WrongFileName {
        /// The name the file should have had.
        expected: String,
    },
}

impl fmt::Display for ServiceFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceFileError::Io(e) => write!(f, "cannot read service file: {e}"),
            ServiceFileError::TooLarge(n) => {
                write!(
                    f,
                    "service file is too large ({n} bytes, limit {MAX_SERVICE_FILE_SIZE})"
                )
            }
            ServiceFileError::NotUtf8 => f.write_str("service file is not valid UTF-8"),
            ServiceFileError::Syntax { line, message } => write!(f, "line {line}: {message}"),
            ServiceFileError::MissingGroup => {
                write!(f, "no [{SERVICE_GROUP}] group in service file")
            }
            ServiceFileError::MissingKey(k) => write!(f, "no \"{k}\" key in service file"),
            ServiceFileError::InvalidName(n) => {
                write!(f, "\"{n}\" is not a valid well-known bus name")
            }
            ServiceFileError::WrongFileName { expected } => {
                write!(f, "service file should have been named \"{expected}\"")
            }
        }
    }
}

impl std::error::Error for ServiceFileError {}

/// Splits text into lines at `\n`, `\r\n` or a lone `\r`, as dbus' keyfile reader does.
fn keyfile_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\n', '\r']) {
            Some(i) => {
                let line = s.get(..i).unwrap_or("");
                let after = s.get(i..).unwrap_or("");
                let skip = if after.starts_with("\r\n") { 2 } else { 1 };
                let tail = after.get(skip..).unwrap_or("");
                // A final line terminator does not start another (empty) line.
                rest = if tail.is_empty() { None } else { Some(tail) };
                Some(line)
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// Desktop-entry value unescaping as dbus does it: `\s \t \n \r \\` only.
fn unescape_value(raw: &str, line: usize) -> Result<String, ServiceFileError> {
    let syntax = |message| ServiceFileError::Syntax { line, message };
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\0' => return Err(syntax("value contains a NUL character")),
            '\\' => out.push(match chars.next() {
                Some('s') => ' ',
                Some('t') => '\t',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('\\') => '\\',
                Some(_) => return Err(syntax("invalid escape sequence in value")),
                None => return Err(syntax("value ends in a backslash")),
            }),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Parses the text of a service file read from `path` (used for `ServiceFile::path` only;
/// `mtime` is left `None`).
///
/// Keyfile rules follow dbus-daemon: lines starting with `#` and blank lines are ignored; a
/// group header is `[name]` with the `]` last on the line; keys are `[A-Za-z0-9-]+`, spaces
/// are allowed around `=`, localised keys (`Key[xx]=`) are ignored; values use the escapes
/// `\s \t \n \r \\`. Only the first `[D-BUS Service]` group counts and the first occurrence
/// of a key wins; other groups are ignored (but must be well-formed). `Name` (a valid
/// well-known name) and `Exec` are required: dbus-daemon does not load a file without
/// `Exec`, even one that names a `SystemdService`.
pub fn parse_service_file(path: &Path, text: &str) -> Result<ServiceFile, ServiceFileError> {
    #[derive(PartialEq)]
    enum Group {
        None,
        Service,
        Other,
    }
    let mut group = Group::None;
    let mut service_seen = false;
    let mut name = None;
    let mut exec = None;
    let mut user = None;
    let mut systemd_service = None;
    let mut apparmor = None;

    for (idx, line) in keyfile_lines(text).enumerate() {
        let lineno = idx.saturating_add(1);
        let syntax = |message| ServiceFileError::Syntax {
            line: lineno,
            message,
        };
        if let Some(rest) = line.strip_prefix('[') {
            let gname = rest
                .strip_suffix(']')
                .filter(|g| !g.is_empty())
                .ok_or(syntax("invalid group header"))?;
            if gname
                .bytes()
                .any(|b| !(0x20..0x7f).contains(&b) || b == b'[' || b == b']')
            {
                return Err(syntax("invalid characters in group name"));
            }
            // Only the first service group counts, like dbus-daemon's section lookup.
            group = if gname == SERVICE_GROUP && !service_seen {
                service_seen = true;
                Group::Service
            } else {
                Group::Other
            };
            continue;
        }
        if line.starts_with('#') || line.chars().all(|c| matches!(c, ' ' | '\t' | '\x0c')) {
            continue;
        }
        if group == Group::None {
            return Err(syntax("key=value line before any group header"));
        }
        let key_len = line
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        let (key, rest) = line.split_at(key_len);
        if key.is_empty() {
            return Err(syntax("empty key name"));
        }
        if rest.starts_with('[') {
            continue; // localised value: never used for service files
        }
        let rest = rest.trim_start_matches(' ');
        let value = match rest.strip_prefix('=') {
            Some(v) => v.trim_start_matches(' '),
            None if rest.is_empty() => return Err(syntax("no '=' in key/value line")),
            None => return Err(syntax("invalid characters in key name")),
        };
        // Unescape even in ignored groups: dbus rejects bad escapes anywhere in the file.
        let value = unescape_value(value, lineno)?;
        if group != Group::Service {
            continue;
        }
        let slot = match key {
            "Name" => &mut name,
            "Exec" => &mut exec,
            "User" => &mut user,
            "SystemdService" => &mut systemd_service,
            "AssumedAppArmorLabel" => &mut apparmor,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }

    if !service_seen {
        return Err(ServiceFileError::MissingGroup);
    }
    let name = name.ok_or(ServiceFileError::MissingKey("Name"))?;
    if !is_valid_well_known_name(&name) {
        return Err(ServiceFileError::InvalidName(name));
    }
    let exec = exec.ok_or(ServiceFileError::MissingKey("Exec"))?;
    Ok(ServiceFile {
        name,
        exec,
        user,
        systemd_service,
        assumed_apparmor_label: apparmor,
        path: path.to_path_buf(),
        mtime: None,
    })
}

/// Reads and parses one service file, recording its modification time.
pub fn load_service_file(fs: &dyn ServiceFs, path: &Path) -> Result<ServiceFile, ServiceFileError> {
    load_with_len(fs, path).map(|(f, _)| f)
}

/// [`load_service_file`] plus the file length, part of the freshness stamp.
fn load_with_len(fs: &dyn ServiceFs, path: &Path) -> Result<(ServiceFile, u64), ServiceFileError> {
    let io_err = |e: io::Error| ServiceFileError::Io(e.to_string());
    let meta = fs.stat(path).map_err(io_err)?;
    if !meta.is_file {
        return Err(ServiceFileError::Io("not a regular file".into()));
    }
    if meta.len > MAX_SERVICE_FILE_SIZE {
        return Err(ServiceFileError::TooLarge(meta.len));
    }
    let bytes = fs.read(path).map_err(io_err)?;
    // The file may have grown between stat and read.
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_SERVICE_FILE_SIZE {
        return Err(ServiceFileError::TooLarge(len));
    }
    let text = String::from_utf8(bytes).map_err(|_| ServiceFileError::NotUtf8)?;
    let mut file = parse_service_file(path, &text)?;
    // The stat came before the read, so a concurrent edit shows up as a newer mtime later.
    file.mtime = meta.modified;
    Ok((file, meta.len))
}

/// The transient session service directory `$XDG_RUNTIME_DIR/dbus-1/services` (strict
/// naming, not watched), given `XDG_RUNTIME_DIR` if it is set and non-empty.
pub fn transient_session_dir(xdg_runtime_dir: Option<&Path>) -> Option<PathBuf> {
    xdg_runtime_dir
        .filter(|v| !v.as_os_str().is_empty())
        .map(|rt| rt.join("dbus-1/services"))
}

/// One configured service directory.
#[derive(Debug, Clone)]
struct Dir {
    path: PathBuf,
    /// Files must be named `<Name>.service`.
    strict: bool,
    /// The reactor watches it (inotify) and reloads when it changes, so a lookup miss need
    /// not rescan it ([`ServiceDirs::set_watched`]).
    watched: bool,
}

/// A table entry: the parsed file plus what is needed to notice it changed.
#[derive(Debug, Clone)]
struct Entry {
    file: ServiceFile,
    len: u64,
    /// Index into `ServiceDirs::dirs` (lower is higher priority).
    dir: usize,
}

/// The activatable-name table built from the configured service directories.
pub struct ServiceDirs {
    fs: Rc<dyn ServiceFs>,
    dirs: Vec<Dir>,
    entries: AHashMap<String, Entry>,
    /// Some scan changed the table since [`ServiceDirs::take_changed`] was last called.
    changed: bool,
    /// The directories the reactor last said it watches ([`ServiceDirs::set_watched`]).
    watched: Vec<PathBuf>,
}

impl ServiceDirs {
    /// A table over `dirs` (priority order: the first directory wins for a duplicate name).
    /// Directories also listed in `strict_dirs` only accept files named `<Name>.service`
    /// (e.g. [`transient_session_dir`]); entries of `strict_dirs` not in `dirs` are ignored.
    /// The directories are scanned once now; missing ones are fine.
    pub fn new(dirs: Vec<PathBuf>, strict_dirs: Vec<PathBuf>, fs: Rc<dyn ServiceFs>) -> Self {
        let mut table = ServiceDirs {
            fs,
            dirs: Vec::new(),
            entries: AHashMap::new(),
            changed: false,
            watched: Vec::new(),
        };
        table.set_dirs(dirs, &strict_dirs);
        table.entries = table.scan_where(|_| true);
        table
    }

    /// Replaces the directory list (ReloadConfig) and rescans; returns whether the table
    /// changed.
    pub fn reconfigure(&mut self, dirs: Vec<PathBuf>, strict_dirs: Vec<PathBuf>) -> bool {
        self.set_dirs(dirs, &strict_dirs);
        self.rescan()
    }

    fn set_dirs(&mut self, dirs: Vec<PathBuf>, strict_dirs: &[PathBuf]) {
        let mut out: Vec<Dir> = Vec::with_capacity(dirs.len());
        for path in dirs {
            // A repeated directory would only shadow itself.
            if out.iter().any(|d| d.path == path) {
                continue;
            }
            let strict = strict_dirs.contains(&path);
            let watched = self.watched.contains(&path);
            out.push(Dir {
                path,
                strict,
                watched,
            });
        }
        self.dirs = out;
    }

    /// The reactor watches exactly `dirs` (inotify) and reloads the configuration, which
    /// rescans, whenever a file in one of them is written, removed or renamed. A lookup miss
    /// then needs no rescan of those: only of the directories not watched (strict ones,
    /// missing ones, all of them without a watch), which dbus-daemon rescans on every miss
    /// (`activation_find_entry` → `update_service_cache`). A directory configured later is
    /// unwatched until the reactor says otherwise.
    pub fn set_watched<'a>(&mut self, dirs: impl IntoIterator<Item = &'a Path>) {
        self.watched = dirs.into_iter().map(Path::to_path_buf).collect();
        for d in &mut self.dirs {
            d.watched = self.watched.contains(&d.path);
        }
    }

    /// Reloads every directory. Missing directories are fine; invalid files are logged
    /// with `log::warn!` and skipped. Returns whether the table changed (names or contents;
    /// a touched but identical file is no change), e.g. to emit `ActivatableServicesChanged`.
    pub fn rescan(&mut self) -> bool {
        let new = self.scan_where(|_| true);
        let changed = new.len() != self.entries.len()
            || new.iter().any(|(name, e)| match self.entries.get(name) {
                Some(old) => !old.file.same_content(&e.file),
                None => true,
            });
        self.entries = new;
        self.changed |= changed;
        changed
    }

    /// Whether any scan (including one triggered by [`ServiceDirs::lookup`]) changed the
    /// table since the last call; clears the flag.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Finds the service file for `name`, with dbus-daemon's cache behaviour: on a miss the
    /// directories are rescanned once; on a hit the file is stat'ed and, if it changed or
    /// disappeared, the directories are rescanned (so a removed or renamed file falls back
    /// to a lower-priority directory's file, and an edited file is reparsed). Watched
    /// directories ([`ServiceDirs::set_watched`]) are not rescanned on a miss: the table
    /// already holds what they provide. Call it once per message and pass the answer on.
    pub fn lookup(&mut self, name: &str) -> Option<&ServiceFile> {
        // Invalid names can never be in the table; don't let them trigger scans.
        if !is_valid_well_known_name(name) {
            return None;
        }
        match self.entries.get(name) {
            Some(e) if is_fresh(&*self.fs, e) => {}
            Some(_) => {
                self.rescan();
            }
            None => self.rescan_for_miss(name),
        }
        self.entries.get(name).map(|e| &e.file)
    }

    /// `name` is not in the table: rescan what could provide it now. With no directory
    /// watched that is all of them (dbus-daemon's rescan-on-miss); with all of them watched,
    /// none; otherwise the unwatched ones are read and, only if one of them provides `name`,
    /// the whole table is rebuilt (so directory priorities are applied as in any scan).
    fn rescan_for_miss(&mut self, name: &str) {
        let watched = self.dirs.iter().filter(|d| d.watched).count();
        let rescan = watched == 0
            || (watched < self.dirs.len() && self.scan_where(|d| !d.watched).contains_key(name));
        if rescan {
            self.rescan();
        }
    }

    /// The cached entry for `name`, without touching the filesystem.
    pub fn get(&self, name: &str) -> Option<&ServiceFile> {
        self.entries.get(name).map(|e| &e.file)
    }

    /// All activatable names (for `ListActivatableNames`), in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of activatable names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No activatable names at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The directories dbus-daemon watches with inotify: all but the strict-naming ones.
    pub fn watched_dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs
            .iter()
            .filter(|d| !d.strict)
            .map(|d| d.path.as_path())
    }

    /// Reads the directories `include` accepts into a fresh table.
    fn scan_where(&self, include: impl Fn(&Dir) -> bool) -> AHashMap<String, Entry> {
        let mut table: AHashMap<String, Entry> = AHashMap::new();
        for (idx, dir) in self.dirs.iter().enumerate() {
            if !include(dir) {
                continue;
            }
            let rd = match self.fs.list(&dir.path) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::debug!("service directory {} does not exist", dir.path.display());
                    continue;
                }
                Err(e) => {
                    log::warn!("cannot read service directory {}: {e}", dir.path.display());
                    continue;
                }
            };
            // Sorted so duplicates inside one directory resolve the same way every time.
            let mut files: Vec<_> = rd
                .into_iter()
                .filter(|n| n.as_bytes().ends_with(SERVICE_FILE_SUFFIX.as_bytes()))
                .collect();
            files.sort();
            for fname in files {
                let path = dir.path.join(&fname);
                let (file, len) = match load_with_len(&*self.fs, &path) {
                    Ok(v) => v,
                    Err(e) => {
                        log::warn!("ignoring service file {}: {e}", path.display());
                        continue;
                    }
                };
                let canonical = fname.as_os_str() == OsStr::new(&file.expected_file_name());
                if dir.strict && !canonical {
                    let e = ServiceFileError::WrongFileName {
                        expected: file.expected_file_name(),
                    };
                    log::warn!("ignoring service file {}: {e}", path.display());
                    continue;
                }
                match table.get(&file.name) {
                    Some(old) if old.dir < idx => {
                        log::debug!(
                            "{} is shadowed by {} for {}",
                            path.display(),
                            old.file.path.display(),
                            file.name
                        );
                        continue;
                    }
                    Some(old) => {
                        // Same directory: the canonically named file wins, else the first.
                        let old_canonical = old.file.path.file_name()
                            == Some(OsStr::new(&old.file.expected_file_name()));
                        if old_canonical || !canonical {
                            log::warn!(
                                "ignoring service file {}: {} already provided by {}",
                                path.display(),
                                file.name,
                                old.file.path.display()
                            );
                            continue;
                        }
                    }
                    None => {}
                }
                table.insert(
                    file.name.clone(),
                    Entry {
                        file,
                        len,
                        dir: idx,
                    },
                );
            }
        }
        table
    }
}

impl fmt::Debug for ServiceDirs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceDirs")
            .field("dirs", &self.dirs)
            .field("entries", &self.entries)
            .field("changed", &self.changed)
            .finish_non_exhaustive()
    }
}

/// The cached entry still describes the file on disk (same mtime and size).
fn is_fresh(fs: &dyn ServiceFs, e: &Entry) -> bool {
    match fs.stat(&e.file.path) {
        Ok(m) => m.is_file && m.len == e.len && m.modified == e.file.mtime,
        Err(_) => false,
    }
}

/// Why an `Exec` line could not be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecParseError {
    /// The line holds no words.
    Empty,
    /// A quote (`'` or `"`) is never closed.
    UnclosedQuote(char),
    /// The line ends with an unquoted backslash.
    TrailingBackslash,
}

impl fmt::Display for ExecParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecParseError::Empty => f.write_str("no tokens found in command line"),
            ExecParseError::UnclosedQuote(q) => write!(f, "unclosed {q} quote in command line"),
            ExecParseError::TrailingBackslash => {
                f.write_str("command line ends with an unquoted backslash")
            }
        }
    }
}

impl std::error::Error for ExecParseError {}

/// Split an Exec line into argv with shell-like quoting (dbus' `_dbus_shell_parse_argv`
/// rules): words are separated by unquoted space, tab or newline; single quotes keep
/// everything literally; inside double quotes a backslash escapes only `"` `\` `` ` `` `$`
/// and newline (otherwise it stays); outside quotes a backslash escapes any character and
/// backslash-newline vanishes; `#` at the start of a word comments out the rest of the
/// line; `''` yields an empty argument. No variable, tilde or glob expansion.
pub fn parse_exec(exec: &str) -> Result<Vec<String>, ExecParseError> {
    let mut argv = Vec::new();
    let mut word = String::new();
    // Distinguishes "no word yet" from a word that is empty because of `''`.
    let mut in_word = false;
    let mut chars = exec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    argv.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(ExecParseError::UnclosedQuote('\'')),
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(ExecParseError::UnclosedQuote('"')),
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&e @ ('"' | '\\' | '`' | '$' | '\n')) => {
                                word.push(e);
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some(ch) => word.push(ch),
                    }
                }
            }
            '\\' => match chars.next() {
                None => return Err(ExecParseError::TrailingBackslash),
                Some('\n') => {}
                Some(ch) => {
                    word.push(ch);
                    in_word = true;
                }
            },
            '#' if !in_word => {
                // The newline (if any) is left: it only delimits, and no word is open.
                while chars.next_if(|&ch| ch != '\n').is_some() {}
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        argv.push(word);
    }
    if argv.is_empty() {
        return Err(ExecParseError::Empty);
    }
    Ok(argv)
}

/// Why `UpdateActivationEnvironment` refused its pairs (sent as `InvalidArgs` text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// A variable name is empty.
    EmptyName,
    /// A variable name contains `=`.
    NameWithEquals(String),
    /// A name or value contains NUL (the name is shown).
    Nul(String),
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::EmptyName => f.write_str("environment variable name must not be empty"),
            EnvError::NameWithEquals(k) => {
                write!(f, "environment variable name \"{k}\" must not contain '='")
            }
            EnvError::Nul(k) => write!(
                f,
                "environment variable \"{}\" must not contain NUL",
                k.escape_debug()
            ),
        }
    }
}

impl std::error::Error for EnvError {}

/// The environment for activated services: the daemon's environment with
/// `UpdateActivationEnvironment` pairs merged over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationEnv {
    vars: BTreeMap<String, String>,
}

impl ActivationEnv {
    /// Starts from the daemon's own environment, given as `vars` (variables that are not
    /// UTF-8 are skipped: they could not be represented in `a{ss}` anyway).
    pub fn from_os_vars(vars: &[(OsString, OsString)]) -> Self {
        Self::from_vars(
            vars.iter()
                .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v.to_str()?.to_owned()))),
        )
    }

    /// Starts from the given variables (later duplicates win).
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        ActivationEnv {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Merges `UpdateActivationEnvironment` pairs. All-or-nothing: if any key is empty or
    /// contains `=` or NUL, or any value contains NUL, nothing is changed and the error
    /// text (for `InvalidArgs`) is returned.
    pub fn update(&mut self, pairs: &[(&str, &str)]) -> Result<(), EnvError> {
        for (k, v) in pairs {
            if k.is_empty() {
                return Err(EnvError::EmptyName);
            }
            if k.contains('=') {
                return Err(EnvError::NameWithEquals((*k).to_owned()));
            }
            if k.contains('\0') || v.contains('\0') {
                return Err(EnvError::Nul((*k).to_owned()));
            }
        }
        for (k, v) in pairs {
            self.vars.insert((*k).to_string(), (*v).to_string());
        }
        Ok(())
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// All variables, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The full environment for a spawned service: these variables plus
    /// `DBUS_STARTER_ADDRESS=<bus_address>` and, when the bus has a `<type>`,
    /// `DBUS_STARTER_BUS_TYPE=<type>` and `DBUS_SESSION_BUS_ADDRESS` (type `session`) or
    /// `DBUS_SYSTEM_BUS_ADDRESS` (type `system`). The bus-supplied variables override
    /// same-named ones, so the service always reaches the bus that started it.
    pub fn for_service(&self, bus_address: &str, bus_type: Option<&str>) -> Vec<(String, String)> {
        let mut vars = self.vars.clone();
        let mut set = |k: &str, v: &str| {
            vars.insert(k.to_string(), v.to_string());
        };
        set("DBUS_STARTER_ADDRESS", bus_address);
        if let Some(t) = bus_type {
            set("DBUS_STARTER_BUS_TYPE", t);
            match t {
                "session" => set("DBUS_SESSION_BUS_ADDRESS", bus_address),
                "system" => set("DBUS_SYSTEM_BUS_ADDRESS", bus_address),
                _ => {}
            }
        }
        vars.into_iter().collect()
    }
}

/// systemd unit name used when a service file has no SystemdService but --systemd-activation
/// is on: `dbus-<name>.service` (the naming convention of units aliased for D-Bus names).
pub fn systemd_unit_for(name: &str) -> String {
    format!("dbus-{name}{SERVICE_FILE_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::service_fs::RealFs;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const INSTALLED: &str = "/usr/lib/dbus-1.0/installed-tests/dbus/data";

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "sluicebus-activation-{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
        fn write(&self, fname: &str, text: &str) -> PathBuf {
            let p = self.0.join(fname);
            fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn svc(name: &str, exec: &str) -> String {
        format!("[D-BUS Service]\nName={name}\nExec={exec}\n")
    }

    fn parse(text: &str) -> Result<ServiceFile, ServiceFileError> {
        parse_service_file(Path::new("/x/t.service"), text)
    }

    fn syntax_line(r: Result<ServiceFile, ServiceFileError>) -> usize {
        match r {
            Err(ServiceFileError::Syntax { line, .. }) => line,
            other => panic!("expected syntax error, got {other:?}"),
        }
    }

    /// Sets a file's mtime explicitly: coarse filesystem timestamps would otherwise make
    /// two quick writes indistinguishable.
    fn set_mtime(path: &Path, t: SystemTime) {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    // ---- parse_service_file ----

    #[test]
    fn parses_all_keys() {
        let f = parse(
            "# comment\n\n[D-BUS Service]\nName=org.example.Foo\nExec=/usr/bin/foo --bar\n\
             User=nobody\nSystemdService=foo.service\nAssumedAppArmorLabel=foo//bar\n",
        )
        .unwrap();
        assert_eq!(f.name, "org.example.Foo");
        assert_eq!(f.exec, "/usr/bin/foo --bar");
        assert_eq!(f.user.as_deref(), Some("nobody"));
        assert_eq!(f.systemd_service.as_deref(), Some("foo.service"));
        assert_eq!(f.assumed_apparmor_label.as_deref(), Some("foo//bar"));
        assert_eq!(f.path, Path::new("/x/t.service"));
        assert_eq!(f.mtime, None);
        assert_eq!(f.expected_file_name(), "org.example.Foo.service");
    }

    #[test]
    fn optional_keys_absent() {
        let f = parse(&svc("a.b", "/bin/true")).unwrap();
        assert_eq!(f.user, None);
        assert_eq!(f.systemd_service, None);
        assert_eq!(f.assumed_apparmor_label, None);
    }

    #[test]
    fn keyfile_details() {
        // Spaces around '=', CRLF and lone CR line ends, other groups, unknown and localised
        // keys, first occurrence wins, no trailing newline.
        let f = parse(
            "[Other]\r\nName=ignored.name\r\n[D-BUS Service]\rName = org.a.B\nName=org.c.D\n\
             Comment[de]=x\nX-Unknown=1\nExec  =   /bin/a\\sb\\tc\\nd\\re\\\\f  ",
        )
        .unwrap();
        assert_eq!(f.name, "org.a.B");
        assert_eq!(f.exec, "/bin/a b\tc\nd\re\\f  ");
    }

    #[test]
    fn only_first_service_group_counts() {
        let f =
            parse("[D-BUS Service]\nName=org.a.B\n[D-BUS Service]\nExec=/bin/x\nName=org.c.D\n");
        assert_eq!(f, Err(ServiceFileError::MissingKey("Exec")));
    }

    #[test]
    fn rejects_missing_pieces() {
        assert_eq!(parse(""), Err(ServiceFileError::MissingGroup));
        assert_eq!(parse("# only\n"), Err(ServiceFileError::MissingGroup));
        assert_eq!(
            parse("[Service]\nName=a.b\nExec=x\n"),
            Err(ServiceFileError::MissingGroup)
        );
        assert_eq!(
            parse("[D-BUS Service]\nExec=/bin/x\n"),
            Err(ServiceFileError::MissingKey("Name"))
        );
        assert_eq!(
            parse("[D-BUS Service]\nName=a.b\n"),
            Err(ServiceFileError::MissingKey("Exec"))
        );
        // Group names are case-sensitive.
        assert_eq!(
            parse("[d-bus service]\nName=a.b\nExec=x\n"),
            Err(ServiceFileError::MissingGroup)
        );
    }

    #[test]
    fn exec_is_required_even_beside_a_systemd_service() {
        assert_eq!(
            parse("[D-BUS Service]\nName=a.b\nSystemdService=x.service\n"),
            Err(ServiceFileError::MissingKey("Exec"))
        );
        let f = parse("[D-BUS Service]\nName=a.b\nExec=/bin/false\nSystemdService=x.service\n")
            .unwrap();
        assert_eq!(f.systemd_service.as_deref(), Some("x.service"));
    }

    #[test]
    fn rejects_invalid_names() {
        for n in [
            "", "nodots", ":1.5", "a..b", "1a.b", "a.b.", "a.b/c", "a.b c",
        ] {
            let r = parse(&format!("[D-BUS Service]\nName={n}\nExec=/bin/x\n"));
            assert_eq!(
                r,
                Err(ServiceFileError::InvalidName(n.to_string())),
                "{n:?}"
            );
        }
        // Escapes are resolved before validation.
        assert!(matches!(
            parse("[D-BUS Service]\nName=a.b\\s\nExec=x\n"),
            Err(ServiceFileError::InvalidName(_))
        ));
    }

    #[test]
    fn rejects_syntax_errors_with_line_numbers() {
        assert_eq!(syntax_line(parse("Name=a.b\n[D-BUS Service]\n")), 1);
        assert_eq!(syntax_line(parse("\n# c\n[D-BUS Service\n")), 3);
        assert_eq!(syntax_line(parse("[]\n")), 1);
        assert_eq!(syntax_line(parse("[D-BUS Service] \n")), 1);
        assert_eq!(syntax_line(parse("[a]b]\n")), 1);
        assert_eq!(syntax_line(parse("[a\tb]\n")), 1);
        assert_eq!(syntax_line(parse("[grüppe]\n")), 1);
        let base = "[D-BUS Service]\nName=a.b\n";
        for bad in [
            "=value",
            "Key value",
            "Key",
            "Key  ",
            "Ke_y=v",
            "Exec=a\\xb",
            "Exec=a\\",
            "Exec=a\0b",
            " Exec=x",
        ] {
            assert_eq!(syntax_line(parse(&format!("{base}{bad}\n"))), 3, "{bad:?}");
        }
        // Bad escapes are rejected in ignored groups too.
        assert_eq!(syntax_line(parse("[X]\nK=\\q\n")), 2);
        // Indented comments are not comments.
        assert_eq!(syntax_line(parse("[D-BUS Service]\n  # x\n")), 2);
    }

    #[test]
    fn blank_lines_may_hold_whitespace() {
        let f = parse("[D-BUS Service]\n \t \nName=a.b\n\x0c\nExec=x\n").unwrap();
        assert_eq!(f.name, "a.b");
    }

    #[test]
    fn check_system_bus_requires_user() {
        let f = parse(&svc("a.b", "/bin/x")).unwrap();
        assert_eq!(
            f.check_system_bus(),
            Err(ServiceFileError::MissingKey("User"))
        );
        let f = parse("[D-BUS Service]\nName=a.b\nExec=x\nUser=root\n").unwrap();
        assert_eq!(f.check_system_bus(), Ok(()));
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            ServiceFileError::MissingKey("Exec").to_string(),
            "no \"Exec\" key in service file"
        );
        assert_eq!(
            ServiceFileError::Syntax {
                line: 4,
                message: "empty key name"
            }
            .to_string(),
            "line 4: empty key name"
        );
        assert!(ServiceFileError::WrongFileName {
            expected: "a.b.service".into()
        }
        .to_string()
        .contains("a.b.service"));
    }

    #[test]
    fn load_checks_size_utf8_and_kind() {
        let d = TempDir::new("load");
        let p = d.write(
            "big.service",
            &"#".repeat(MAX_SERVICE_FILE_SIZE as usize + 1),
        );
        assert!(matches!(
            load_service_file(&RealFs, &p),
            Err(ServiceFileError::TooLarge(_))
        ));
        let p = d.path().join("bin.service");
        fs::write(&p, b"[D-BUS Service]\nName=a.b\nExec=\xff\n").unwrap();
        assert_eq!(
            load_service_file(&RealFs, &p),
            Err(ServiceFileError::NotUtf8)
        );
        fs::create_dir(d.path().join("dir.service")).unwrap();
        assert!(matches!(
            load_service_file(&RealFs, &d.path().join("dir.service")),
            Err(ServiceFileError::Io(_))
        ));
        assert!(matches!(
            load_service_file(&RealFs, &d.path().join("none.service")),
            Err(ServiceFileError::Io(_))
        ));
        let p = d.write("ok.service", &svc("a.b", "/bin/x"));
        let f = load_service_file(&RealFs, &p).unwrap();
        assert_eq!(f.path, p);
        assert!(f.mtime.is_some());
    }

    fn installed_files(sub: &str) -> Option<Vec<PathBuf>> {
        let dir = Path::new(INSTALLED).join(sub);
        let Ok(rd) = fs::read_dir(&dir) else {
            eprintln!(
                "skipping: {} not installed (package dbus-tests)",
                dir.display()
            );
            return None;
        };
        let mut v: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        v.sort();
        assert!(!v.is_empty(), "{} is empty", dir.display());
        Some(v)
    }

    #[test]
    fn installed_valid_service_files_parse() {
        for sub in ["valid-service-files", "valid-service-files-system"] {
            let Some(files) = installed_files(sub) else {
                return;
            };
            for p in files {
                let f = load_service_file(&RealFs, &p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                // All of them are canonically named.
                assert_eq!(
                    p.file_name().unwrap().to_str().unwrap(),
                    f.expected_file_name()
                );
                assert!(!f.exec.is_empty());
                if sub.ends_with("-system") {
                    assert_eq!(f.user.as_deref(), Some("anyrandomuser"));
                    assert_eq!(f.check_system_bus(), Ok(()));
                }
            }
        }
    }

    #[test]
    fn installed_invalid_service_files_rejected() {
        let Some(files) = installed_files("invalid-service-files-system") else {
            return;
        };
        let mut seen = 0;
        for p in files {
            let fname = p.file_name().unwrap().to_str().unwrap().to_string();
            let r = load_service_file(&RealFs, &p);
            if fname.contains("NoExec") {
                assert_eq!(r, Err(ServiceFileError::MissingKey("Exec")));
            } else if fname.contains("NoService") {
                assert_eq!(r, Err(ServiceFileError::MissingKey("Name")));
            } else if fname.contains("NoUser") {
                // Fine for the daemon; the system-bus check (the helper's) rejects it.
                let f = r.unwrap();
                assert_eq!(
                    f.check_system_bus(),
                    Err(ServiceFileError::MissingKey("User"))
                );
            } else {
                panic!("unexpected file {fname}");
            }
            seen += 1;
        }
        assert_eq!(seen, 3);
    }

    #[test]
    fn installed_shell_service_exec_lines() {
        let dir = Path::new(INSTALLED).join("valid-service-files");
        let ok = dir.join("org.freedesktop.DBus.TestSuiteShellEchoServiceSuccess.service");
        let fail = dir.join("org.freedesktop.DBus.TestSuiteShellEchoServiceFail.service");
        if !ok.exists() {
            eprintln!("skipping: dbus-tests not installed");
            return;
        }
        let f = load_service_file(&RealFs, &ok).unwrap();
        let argv = parse_exec(&f.exec).unwrap();
        assert_eq!(
            argv[1..],
            ["-test", "that", "we get", "back", "--what", "we put in"]
        );
        let f = load_service_file(&RealFs, &fail).unwrap();
        assert_eq!(parse_exec(&f.exec), Err(ExecParseError::UnclosedQuote('"')));
    }

    #[test]
    fn system_service_files_on_this_machine_parse() {
        for dir in [
            "/usr/share/dbus-1/services",
            "/usr/share/dbus-1/system-services",
        ] {
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for e in rd {
                let p = e.unwrap().path();
                if p.extension() != Some(OsStr::new("service")) {
                    continue;
                }
                let f = load_service_file(&RealFs, &p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                parse_exec(&f.exec).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    }

    // ---- ServiceDirs ----

    #[test]
    fn scans_dirs_and_skips_invalid_and_non_service_files() {
        let d = TempDir::new("scan");
        d.write("org.a.One.service", &svc("org.a.One", "/bin/one"));
        d.write("whatever.service", &svc("org.a.Two", "/bin/two"));
        d.write("org.a.Three.service.bak", &svc("org.a.Three", "/bin/3"));
        d.write("org.a.Bad.service", "[D-BUS Service]\nName=org.a.Bad\n");
        d.write("garbage.service", "\u{1}\u{2}");
        fs::create_dir(d.path().join("sub.service")).unwrap();
        let mut t = ServiceDirs::new(
            vec![PathBuf::from("/nonexistent/sluicebus"), d.path().into()],
            vec![],
            Rc::new(RealFs),
        );
        let mut names: Vec<&str> = t.names().collect();
        names.sort();
        assert_eq!(names, ["org.a.One", "org.a.Two"]);
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
        assert_eq!(t.lookup("org.a.Two").unwrap().exec, "/bin/two");
        assert!(t.lookup("org.a.Bad").is_none());
        assert!(t.lookup("org.a.Three").is_none());
        assert!(t.lookup(":1.5").is_none());
        assert!(t.lookup("").is_none());
    }

    #[test]
    fn first_dir_wins() {
        let hi = TempDir::new("hi");
        let lo = TempDir::new("lo");
        hi.write("org.a.S.service", &svc("org.a.S", "/hi"));
        lo.write("org.a.S.service", &svc("org.a.S", "/lo"));
        lo.write("org.a.Only.service", &svc("org.a.Only", "/lo-only"));
        let mut t = ServiceDirs::new(
            vec![hi.path().into(), lo.path().into()],
            vec![],
            Rc::new(RealFs),
        );
        assert_eq!(t.lookup("org.a.S").unwrap().exec, "/hi");
        assert_eq!(t.lookup("org.a.Only").unwrap().exec, "/lo-only");
        // Reversed priority.
        let mut t = ServiceDirs::new(
            vec![lo.path().into(), hi.path().into()],
            vec![],
            Rc::new(RealFs),
        );
        assert_eq!(t.lookup("org.a.S").unwrap().exec, "/lo");
    }

    #[test]
    fn duplicate_in_one_dir_prefers_canonical_name() {
        let d = TempDir::new("dup");
        d.write("aaa.service", &svc("org.a.S", "/noncanonical"));
        d.write("org.a.S.service", &svc("org.a.S", "/canonical"));
        d.write("zzz.service", &svc("org.a.S", "/other"));
        let mut t = ServiceDirs::new(vec![d.path().into()], vec![], Rc::new(RealFs));
        assert_eq!(t.lookup("org.a.S").unwrap().exec, "/canonical");
        fs::remove_file(d.path().join("org.a.S.service")).unwrap();
        // Without a canonical file, the first in name order wins.
        assert_eq!(t.lookup("org.a.S").unwrap().exec, "/noncanonical");
    }

    #[test]
    fn strict_dir_requires_canonical_names() {
        let strict = TempDir::new("strict");
        let loose = TempDir::new("loose");
        strict.write("org.a.Good.service", &svc("org.a.Good", "/good"));
        strict.write("misnamed.service", &svc("org.a.Mis", "/mis"));
        loose.write("misnamed2.service", &svc("org.a.Mis2", "/mis2"));
        let mut t = ServiceDirs::new(
            vec![strict.path().into(), loose.path().into()],
            vec![strict.path().into()],
            Rc::new(RealFs),
        );
        assert!(t.lookup("org.a.Good").is_some());
        assert!(t.lookup("org.a.Mis").is_none());
        assert!(t.lookup("org.a.Mis2").is_some());
        let watched: Vec<&Path> = t.watched_dirs().collect();
        assert_eq!(watched, [loose.path()]);
    }

    #[test]
    fn rescan_on_miss() {
        let d = TempDir::new("miss");
        let mut t = ServiceDirs::new(vec![d.path().into()], vec![], Rc::new(RealFs));
        assert!(t.lookup("org.a.Late").is_none());
        assert!(!t.take_changed());
        d.write("org.a.Late.service", &svc("org.a.Late", "/late"));
        assert!(
            t.get("org.a.Late").is_none(),
            "get() must not touch the disk"
        );
        assert_eq!(t.lookup("org.a.Late").unwrap().exec, "/late");
        assert!(t.take_changed());
        assert!(!t.take_changed());
        assert!(t.get("org.a.Late").is_some());
    }

    #[test]
    fn missing_dir_created_later() {
        let d = TempDir::new("later");
        let sub = d.path().join("services");
        let mut t = ServiceDirs::new(vec![sub.clone()], vec![], Rc::new(RealFs));
        assert!(t.is_empty());
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("org.a.X.service"), svc("org.a.X", "/x")).unwrap();
        assert!(t.lookup("org.a.X").is_some());
    }

    #[test]
    fn mtime_change_reloads() {
        let d = TempDir::new("mtime");
        let p = d.write("org.a.M.service", &svc("org.a.M", "/v1"));
        let t0 = SystemTime::now() - Duration::from_secs(100);
        set_mtime(&p, t0);
        let mut t = ServiceDirs::new(vec![d.path().into()], vec![], Rc::new(RealFs));
        assert_eq!(t.lookup("org.a.M").unwrap().exec, "/v1");
        assert_eq!(t.lookup("org.a.M").unwrap().mtime, Some(t0));
        // Same length, new content, new mtime.
        fs::write(&p, svc("org.a.M", "/v2")).unwrap();
        set_mtime(&p, t0 + Duration::from_secs(10));
        assert_eq!(t.lookup("org.a.M").unwrap().exec, "/v2");
        // Size change with the mtime forced back still counts.
        fs::write(&p, svc("org.a.M", "/v333")).unwrap();
        set_mtime(&p, t0 + Duration::from_secs(10));
        assert_eq!(t.lookup("org.a.M").unwrap().exec, "/v333");
        // Edited into an invalid file: gone.
        fs::write(&p, "[D-BUS Service]\nName=org.a.M\n").unwrap();
        set_mtime(&p, t0 + Duration::from_secs(20));
        assert!(t.lookup("org.a.M").is_none());
    }

    #[test]
    fn touched_file_is_not_a_change() {
        let d = TempDir::new("touch");
        let p = d.write("org.a.T.service", &svc("org.a.T", "/t"));
        let mut t = ServiceDirs::new(vec![d.path().into()], vec![], Rc::new(RealFs));
        set_mtime(&p, SystemTime::now() - Duration::from_secs(5));
        assert!(t.lookup("org.a.T").is_some());
        assert!(!t.take_changed());
        assert!(!t.rescan());
    }

    #[test]
    fn renamed_service_in_file() {
        let d = TempDir::new("rename");
        let p = d.write("x.service", &svc("org.a.Old", "/x"));
        let t0 = SystemTime::now() - Duration::from_secs(100);
        set_mtime(&p, t0);
        let mut t = ServiceDirs::new(vec![d.path().into()], vec![], Rc::new(RealFs));
        assert!(t.lookup("org.a.Old").is_some());
        fs::write(&p, svc("org.a.New", "/x")).unwrap();
        set_mtime(&p, t0 + Duration::from_secs(1));
        assert!(t.lookup("org.a.Old").is_none());
        assert!(t.get("org.a.New").is_some());
    }

    #[test]
    fn removal_falls_back_to_lower_priority() {
        let hi = TempDir::new("rmhi");
        let lo = TempDir::new("rmlo");
        let p = hi.write("org.a.R.service", &svc("org.a.R", "/hi"));
        lo.write("org.a.R.service", &svc("org.a.R", "/lo"));
        let mut t = ServiceDirs::new(
            vec![hi.path().into(), lo.path().into()],
            vec![],
            Rc::new(RealFs),
        );
        assert_eq!(t.lookup("org.a.R").unwrap().exec, "/hi");
        fs::remove_file(&p).unwrap();
        assert_eq!(t.lookup("org.a.R").unwrap().exec, "/lo");
        fs::remove_file(lo.path().join("org.a.R.service")).unwrap();
        assert!(t.lookup("org.a.R").is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn rescan_reports_changes() {
        let d = TempDir::new("changes");
        let mut t = ServiceDirs::new(vec![d.path().into()], vec![], Rc::new(RealFs));
        assert!(!t.rescan());
        let p = d.write("org.a.C.service", &svc("org.a.C", "/c"));
        assert!(t.rescan());
        assert!(!t.rescan());
        fs::write(&p, svc("org.a.C", "/changed")).unwrap();
        assert!(t.rescan());
        fs::remove_file(&p).unwrap();
        assert!(t.rescan());
        assert!(t.take_changed());
    }

    #[test]
    fn reconfigure_switches_dirs() {
        let a = TempDir::new("cfga");
        let b = TempDir::new("cfgb");
        a.write("org.a.A.service", &svc("org.a.A", "/a"));
        b.write("org.a.B.service", &svc("org.a.B", "/b"));
        let mut t = ServiceDirs::new(vec![a.path().into()], vec![], Rc::new(RealFs));
        assert!(t.get("org.a.A").is_some());
        assert!(t.reconfigure(vec![b.path().into(), b.path().into()], vec![]));
        assert!(t.get("org.a.A").is_none());
        assert!(t.get("org.a.B").is_some());
        assert!(!t.reconfigure(vec![b.path().into()], vec![]));
    }

    #[test]
    fn installed_dir_as_service_dir() {
        let dir = Path::new(INSTALLED).join("valid-service-files");
        if !dir.exists() {
            eprintln!("skipping: dbus-tests not installed");
            return;
        }
        let mut t = ServiceDirs::new(vec![dir.clone()], vec![dir], Rc::new(RealFs));
        assert_eq!(t.len(), 6);
        assert!(t
            .lookup("org.freedesktop.DBus.TestSuiteEchoService")
            .is_some());
        assert!(t
            .lookup("org.freedesktop.DBus.TestSuite.PrivServer")
            .is_some());
    }

    // ---- parse_exec ----

    fn argv(s: &str) -> Vec<String> {
        parse_exec(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn exec_words_and_quotes() {
        assert_eq!(argv("/bin/foo"), ["/bin/foo"]);
        assert_eq!(argv("  a \t b\nc  "), ["a", "b", "c"]);
        assert_eq!(argv("a 'b c' \"d e\""), ["a", "b c", "d e"]);
        assert_eq!(argv("a'b'\"c\"d"), ["abcd"]);
        assert_eq!(argv("'' \"\" x"), ["", "", "x"]);
        assert_eq!(argv("'a\\b' '$HOME' \"x'y\""), ["a\\b", "$HOME", "x'y"]);
        assert_eq!(argv("'foo'\\''bar'"), ["foo'bar"]);
        assert_eq!(argv("~/x *.c $VAR"), ["~/x", "*.c", "$VAR"]);
        assert_eq!(argv("a;b|c>d"), ["a;b|c>d"]);
        assert_eq!(argv("snow☃ 'ü x'"), ["snow☃", "ü x"]);
    }

    #[test]
    fn exec_backslashes() {
        assert_eq!(argv(r"a\ b c"), ["a b", "c"]);
        assert_eq!(argv(r"\'a\' \\ \x"), ["'a'", "\\", "x"]);
        assert_eq!(argv("a\\\nb"), ["ab"]);
        assert_eq!(argv("\\\n a"), ["a"]);
        assert_eq!(
            argv(r#""a\"b" "c\\d" "\$x" "\`y" "\q""#),
            ["a\"b", "c\\d", "$x", "`y", "\\q"]
        );
        assert_eq!(argv("\"a\\\nb\""), ["a\nb"]);
        assert_eq!(argv(r#""\\\"""#), ["\\\""]);
    }

    #[test]
    fn exec_comments() {
        assert_eq!(argv("a #b c\nd"), ["a", "d"]);
        assert_eq!(argv("a b#c"), ["a", "b#c"]);
        assert_eq!(argv("a '#x' \\#y"), ["a", "#x", "#y"]);
        assert_eq!(parse_exec("# nothing"), Err(ExecParseError::Empty));
    }

    #[test]
    fn exec_errors() {
        assert_eq!(parse_exec(""), Err(ExecParseError::Empty));
        assert_eq!(parse_exec(" \t\n "), Err(ExecParseError::Empty));
        assert_eq!(parse_exec("\\\n"), Err(ExecParseError::Empty));
        assert_eq!(parse_exec("a 'b"), Err(ExecParseError::UnclosedQuote('\'')));
        assert_eq!(parse_exec("a \"b"), Err(ExecParseError::UnclosedQuote('"')));
        assert_eq!(
            parse_exec("a \"b\\\""),
            Err(ExecParseError::UnclosedQuote('"'))
        );
        assert_eq!(
            parse_exec("a \"b\\"),
            Err(ExecParseError::UnclosedQuote('"'))
        );
        assert_eq!(parse_exec("a\\"), Err(ExecParseError::TrailingBackslash));
        assert!(ExecParseError::UnclosedQuote('"')
            .to_string()
            .contains("unclosed"));
    }

    // ---- ActivationEnv / systemd ----

    fn env_map(v: Vec<(String, String)>) -> BTreeMap<String, String> {
        let n = v.len();
        let m: BTreeMap<_, _> = v.into_iter().collect();
        assert_eq!(m.len(), n, "duplicate keys in service environment");
        m
    }

    #[test]
    fn env_merging() {
        let mut e = ActivationEnv::from_vars([("PATH", "/bin"), ("HOME", "/h"), ("A", "1")]);
        e.update(&[("A", "2"), ("NEW", "x=y"), ("EMPTY", "")])
            .unwrap();
        assert_eq!(e.get("A"), Some("2"));
        assert_eq!(e.get("NEW"), Some("x=y"));
        assert_eq!(e.get("EMPTY"), Some(""));
        assert_eq!(e.get("PATH"), Some("/bin"));
        assert_eq!(e.iter().count(), 5);
        let m = env_map(e.for_service("unix:path=/tmp/b", Some("session")));
        assert_eq!(m["DBUS_STARTER_ADDRESS"], "unix:path=/tmp/b");
        assert_eq!(m["DBUS_STARTER_BUS_TYPE"], "session");
        assert_eq!(m["DBUS_SESSION_BUS_ADDRESS"], "unix:path=/tmp/b");
        assert!(!m.contains_key("DBUS_SYSTEM_BUS_ADDRESS"));
        assert_eq!(m["A"], "2");
        assert_eq!(m["HOME"], "/h");
        assert_eq!(m.len(), 8);
    }

    #[test]
    fn env_bus_vars_override() {
        let mut e = ActivationEnv::from_vars([("DBUS_STARTER_ADDRESS", "stale")]);
        e.update(&[("DBUS_SYSTEM_BUS_ADDRESS", "user-set")])
            .unwrap();
        let m = env_map(e.for_service("unix:path=/run/dbus/s", Some("system")));
        assert_eq!(m["DBUS_STARTER_ADDRESS"], "unix:path=/run/dbus/s");
        assert_eq!(m["DBUS_STARTER_BUS_TYPE"], "system");
        assert_eq!(m["DBUS_SYSTEM_BUS_ADDRESS"], "unix:path=/run/dbus/s");
        assert!(!m.contains_key("DBUS_SESSION_BUS_ADDRESS"));
        // No <type>: only the starter address.
        let m = env_map(ActivationEnv::from_vars([("X", "1")]).for_service("tcp:port=1", None));
        assert_eq!(m.len(), 2);
        assert_eq!(m["DBUS_STARTER_ADDRESS"], "tcp:port=1");
        // Custom type: named, but no well-known address variable.
        let m = env_map(ActivationEnv::from_vars([("X", "1")]).for_service("a", Some("custom")));
        assert_eq!(m["DBUS_STARTER_BUS_TYPE"], "custom");
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn env_update_rejects_bad_keys_atomically() {
        let mut e = ActivationEnv::from_vars([("A", "1")]);
        let before = e.clone();
        assert!(e.update(&[("B", "2"), ("", "x")]).is_err());
        assert!(e.update(&[("B", "2"), ("C=D", "x")]).is_err());
        assert_eq!(
            e.update(&[("B", "2"), ("C\0", "x")])
                .unwrap_err()
                .to_string(),
            "environment variable \"C\\0\" must not contain NUL"
        );
        assert!(e.update(&[("B", "2"), ("C", "x\0")]).is_err());
        assert_eq!(e, before);
        assert!(e.update(&[]).is_ok());
        assert_eq!(e, before);
    }

    #[test]
    fn env_new_reads_process_env() {
        let vars: Vec<_> = std::env::vars_os().collect();
        let e = ActivationEnv::from_os_vars(&vars);
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
                assert_eq!(e.get(k), Some(v));
            }
        }
    }

    #[test]
    fn systemd_unit_names() {
        assert_eq!(systemd_unit_for("org.a.B"), "dbus-org.a.B.service");
    }
}
