//! dbus-daemon's command line, accepted exactly as dbus-daemon's `bus/main.c` accepts it.
//!
//! Parsed by hand rather than with clap on purpose: dbus-daemon lets `--config-file`, `--address`,
//! `--print-address` and `--print-pid` written without `=` take the *next* argv element as their
//! value, but only if that element is not one of the options tested before the "previous argument"
//! check (so `--print-address --session` prints to stdout, while `--print-address --print-pid`
//! makes `--print-pid` the descriptor and fails with "Invalid file descriptor"). Launchers depend on
//! this (`dbus-run-session` runs `dbus-daemon --nofork --print-address 5 --session`); an
//! option parser with optional values cannot express it. The checks below run in dbus-daemon's
//! order so every quirk matches.

use std::fmt;
use std::path::PathBuf;

use crate::config::{SESSION_CONFIG_FILE, SYSTEM_CONFIG_FILE};

/// How to log, from `--syslog`, `--syslog-only`, `--nosyslog` (`None` on [`Options`]: as the
/// configuration's `<syslog/>` says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogMode {
    /// `--nosyslog`: stderr only.
    Never,
    /// `--syslog`: syslog and stderr.
    Always,
    /// `--syslog-only`: syslog only.
    Only,
}

/// The parsed command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The configuration file: `--config-file`, or the stock file for `--session` / `--system`.
    /// Always set when `parse` succeeds without `help`, `version` or `introspect`.
    pub config_file: Option<PathBuf>,
    /// The configuration came from `--session`.
    pub session: bool,
    /// The configuration came from `--system`.
    pub system: bool,
    /// `--address`: replaces every `<listen>`.
    pub address: Option<String>,
    /// `--print-address[=FD]`: the fd to write the address line to (1 when none given).
    pub print_address: Option<i32>,
    /// `--print-pid[=FD]`: the fd to write the pid line to (1 when none given).
    pub print_pid: Option<i32>,
    /// `--fork` (true) / `--nofork` (false), last wins; `None` = as `<fork/>` says.
    pub fork: Option<bool>,
    /// `--nopidfile`: ignore `<pidfile>`.
    pub nopidfile: bool,
    /// `--systemd-activation`.
    pub systemd_activation: bool,
    /// `--introspect`: print the driver's introspection XML and exit 0. Parsing stops here.
    pub introspect: bool,
    /// Logging override; `None` = as `<syslog/>` says.
    pub syslog: Option<SyslogMode>,
    /// `--version`: print the version banner and exit 0. Parsing stops here.
    pub version: bool,
    /// `--help`, `-h`, `-?`: print [`usage`] to stderr and exit 1. Parsing stops here.
    pub help: bool,
}

/// A command line dbus-daemon would refuse; the caller prints it (and [`usage`] when
/// `show_usage`) to stderr and exits with status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// What is wrong; empty for a plain unknown argument (dbus-daemon prints only the usage).
    pub message: String,
    /// Print the usage text too.
    pub show_usage: bool,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(usage())
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for UsageError {}

/// What this build of the daemon can do, for `--version` (dbus-daemon lists its compiled-in
/// features the same way): systemd's activation protocol, Containers1, directory watching
/// with inotify, and readiness/reload notification to the service manager.
pub const FEATURES: &[&str] = &["systemd-activation", "containers1", "inotify", "sd-notify"];

/// The `--version` text of `program`, shaped like dbus-daemon's: name and version, copyright
/// and warranty lines, then the features (none for a client tool).
pub fn version_text(program: &str, features: &[&str]) -> String {
    let mut t = format!(
        "{program} {}\n\
         Copyright (C) the sluicebus authors\n\
         This is free software ({}); see the source for copying conditions.\n\
         There is NO warranty; not even for MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_LICENSE"),
    );
    if !features.is_empty() {
        t.push_str(&format!("Features: {}\n", features.join(" ")));
    }
    t
}

/// The usage line printed for `--help` and bad arguments.
pub fn usage() -> &'static str {
    "sluicebus [--version] [--session] [--system] [--config-file=FILE] \
     [--print-address[=DESCRIPTOR]] [--print-pid[=DESCRIPTOR]] [--introspect] \
     [--address=ADDRESS] [--nopidfile] [--nosyslog] [--syslog] [--syslog-only] [--nofork] \
     [--fork] [--systemd-activation]"
}

fn plain(message: String) -> UsageError {
    UsageError {
        message,
        show_usage: false,
    }
}

/// Parse the arguments after the program name.
pub fn parse(args: impl Iterator<Item = String>) -> Result<Options, UsageError> {
    let mut o = Options::default();
    // Values kept as strings, empty = not given, exactly as dbus-daemon tracks them (so an
    // empty `--config-file=` does not count as a first config file).
    let mut config = String::new();
    let mut address = String::new();
    let mut addr_fd = String::new();
    let mut pid_fd = String::new();
    let (mut print_address, mut print_pid) = (false, false);
    let (mut syslog_always, mut syslog_never, mut syslog_only) = (false, false, false);
    let mut prev: Option<String> = None;

    let two_configs = |config: &str, what: &str| -> Result<(), UsageError> {
        if config.is_empty() {
            Ok(())
        } else {
            Err(plain(format!(
                "--{what} specified but configuration file {config} already requested"
            )))
        }
    };
    let two = |cur: &str, opt: &str, what: &str| -> Result<(), UsageError> {
        if cur.is_empty() {
            Ok(())
        } else {
            Err(plain(format!(
                "--{opt} specified but {what} {cur} already requested"
            )))
        }
    };

    for arg in args {
        let prev_is = |p: &str| prev.as_deref() == Some(p);
        match arg.as_str() {
            "--help" | "-h" | "-?" => {
                return Ok(Options {
                    help: true,
                    ..Options::default()
                });
            }
            "--version" => {
                return Ok(Options {
                    version: true,
                    ..Options::default()
                })
            }
            "--introspect" => {
                return Ok(Options {
                    introspect: true,
                    ..Options::default()
                })
            }
            "--nosyslog" => {
                syslog_always = false;
                syslog_never = true;
            }
            "--syslog" => {
                syslog_never = false;
                syslog_always = true;
            }
            "--syslog-only" => {
                syslog_never = false;
                syslog_always = true;
                syslog_only = true;
            }
            "--nofork" => o.fork = Some(false),
            "--fork" => o.fork = Some(true),
            "--systemd-activation" => o.systemd_activation = true,
            "--nopidfile" => o.nopidfile = true,
            "--system" => {
                two_configs(&config, "system")?;
                config = SYSTEM_CONFIG_FILE.to_string();
                (o.system, o.session) = (true, false);
            }
            "--session" => {
                two_configs(&config, "session")?;
                config = SESSION_CONFIG_FILE.to_string();
                (o.system, o.session) = (false, true);
            }
            a if a.starts_with("--config-file=") => {
                two_configs(&config, "config-file")?;
                config = a["--config-file=".len()..].to_string();
                (o.system, o.session) = (false, false);
            }
            a if prev_is("--config-file") => {
                two_configs(&config, "config-file")?;
                config = a.to_string();
                (o.system, o.session) = (false, false);
            }
            "--config-file" => {}
            a if a.starts_with("--address=") => {
                two(&address, "address", "address")?;
                address = a["--address=".len()..].to_string();
            }
            a if prev_is("--address") => {
                two(&address, "address", "address")?;
                address = a.to_string();
            }
            "--address" => {}
            a if a.starts_with("--print-address=") => {
                two(&addr_fd, "print-address", "printing address to")?;
                addr_fd = a["--print-address=".len()..].to_string();
                print_address = true;
            }
            a if prev_is("--print-address") => {
                two(&addr_fd, "print-address", "printing address to")?;
                addr_fd = a.to_string();
                print_address = true;
            }
            "--print-address" => print_address = true,
            a if a.starts_with("--print-pid=") => {
                two(&pid_fd, "print-pid", "printing pid to")?;
                pid_fd = a["--print-pid=".len()..].to_string();
                print_pid = true;
            }
            a if prev_is("--print-pid") => {
                two(&pid_fd, "print-pid", "printing pid to")?;
                pid_fd = a.to_string();
                print_pid = true;
            }
            "--print-pid" => print_pid = true,
            _ => {
                return Err(UsageError {
                    message: String::new(),
                    show_usage: true,
                })
            }
        }
        prev = Some(arg);
    }

    // Unlike dbus-daemon, no configuration at all is not an error: the caller runs on the
    // built-in session default (`config_file` stays None).
    if !config.is_empty() {
        o.config_file = Some(PathBuf::from(config));
    }
    if !address.is_empty() {
        o.address = Some(address);
    }
    if print_address {
        o.print_address = Some(parse_fd(&addr_fd)?);
    }
    if print_pid {
        o.print_pid = Some(parse_fd(&pid_fd)?);
    }
    o.syslog = if syslog_always {
        Some(if syslog_only {
            SyslogMode::Only
        } else {
            SyslogMode::Always
        })
    } else if syslog_never {
        Some(SyslogMode::Never)
    } else {
        None
    };
    Ok(o)
}

/// A descriptor as dbus-daemon reads it (strtol, whole string, 0..=i32::MAX); empty = stdout.
fn parse_fd(s: &str) -> Result<i32, UsageError> {
    if s.is_empty() {
        return Ok(1);
    }
    let bad = || plain(format!("Invalid file descriptor: \"{s}\""));
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v: i64 = digits.parse().map_err(|_| bad())?;
    let v = if neg { -v } else { v };
    i32::try_from(v).ok().filter(|v| *v >= 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn dbus_run_session_form() {
        let o = p(&["--nofork", "--print-address", "5", "--session"]).unwrap();
        assert_eq!(o.fork, Some(false));
        assert_eq!(o.print_address, Some(5));
        assert!(o.session && !o.system);
        assert_eq!(
            o.config_file,
            Some(PathBuf::from("/usr/share/dbus-1/session.conf"))
        );
        assert_eq!(o.print_pid, None);
        assert_eq!(o.address, None);
        let o = p(&[
            "--nofork",
            "--print-address",
            "5",
            "--config-file",
            "/x.conf",
        ])
        .unwrap();
        assert_eq!(o.config_file, Some(PathBuf::from("/x.conf")));
        assert!(!o.session);
    }

    #[test]
    fn dbus_launch_and_fork_test_forms() {
        let o = p(&[
            "--syslog-only",
            "--fork",
            "--print-pid",
            "4",
            "--print-address",
            "6",
            "--session",
        ])
        .unwrap();
        assert_eq!(
            (o.print_pid, o.print_address, o.fork),
            (Some(4), Some(6), Some(true))
        );
        assert_eq!(o.syslog, Some(SyslogMode::Only));
        let o = p(&[
            "--fork",
            "--print-address=8",
            "--print-pid=9",
            "--config-file=/c.conf",
        ])
        .unwrap();
        assert_eq!((o.print_address, o.print_pid), (Some(8), Some(9)));
        assert_eq!(o.config_file, Some(PathBuf::from("/c.conf")));
    }

    #[test]
    fn print_address_then_print_pid_is_invalid_fd() {
        let e = p(&["--print-address", "--print-pid", "--session"]).unwrap_err();
        assert_eq!(e.message, "Invalid file descriptor: \"--print-pid\"");
        assert!(!e.show_usage);
    }

    #[test]
    fn value_less_print_options_default_to_stdout() {
        // --session is recognized before the "previous argument" check.
        let o = p(&["--print-address", "--session", "--print-pid"]).unwrap();
        assert_eq!((o.print_address, o.print_pid), (Some(1), Some(1)));
        let o = p(&["--session", "--print-address="]).unwrap();
        assert_eq!(o.print_address, Some(1));
        let o = p(&["--session", "--print-address=0"]).unwrap();
        assert_eq!(o.print_address, Some(0));
    }

    #[test]
    fn config_file_forms() {
        for args in [&["--config-file", "F"][..], &["--config-file=F"][..]] {
            let o = p(args).unwrap();
            assert_eq!(o.config_file, Some(PathBuf::from("F")));
            assert!(!o.session && !o.system);
        }
        let o = p(&["--system"]).unwrap();
        assert!(o.system);
        assert_eq!(
            o.config_file,
            Some(PathBuf::from("/usr/share/dbus-1/system.conf"))
        );
        // An empty --config-file= does not count as a first config.
        let o = p(&["--config-file=", "--session"]).unwrap();
        assert!(o.session);
        // A flag after --config-file is a flag, leaving no config.
        let o = p(&["--config-file", "--nofork"]).unwrap();
        assert!(o.config_file.is_none());
        // But an unrecognized option after it is taken as the file name.
        let o = p(&["--config-file", "--address=x"]).unwrap();
        assert_eq!(o.config_file, Some(PathBuf::from("--address=x")));
        assert_eq!(o.address, None);
    }

    #[test]
    fn two_configs_is_an_error() {
        for args in [
            &["--session", "--system"][..],
            &["--session", "--session"][..],
            &["--system", "--config-file=x"][..],
            &["--config-file", "a", "--config-file", "b"][..],
            &["--config-file=a", "--session"][..],
        ] {
            let e = p(args).unwrap_err();
            assert!(e.message.contains("already requested"), "{args:?}: {e}");
            assert!(!e.show_usage);
        }
    }

    #[test]
    fn repeated_value_options_are_errors() {
        for args in [
            &["--session", "--address=a", "--address=b"][..],
            &["--session", "--address", "a", "--address", "b"][..],
            &["--session", "--print-address=3", "--print-address=4"][..],
            &["--session", "--print-address", "3", "--print-address", "4"][..],
            &["--session", "--print-pid=3", "--print-pid", "4"][..],
        ] {
            let e = p(args).unwrap_err();
            assert!(e.message.contains("already requested"), "{args:?}: {e}");
        }
        // Repeating a value-less --print-address is harmless.
        let o = p(&["--session", "--print-address", "--print-address=3"]).unwrap();
        assert_eq!(o.print_address, Some(3));
        let o = p(&["--session", "--address", "unix:path=/x"]).unwrap();
        assert_eq!(o.address.as_deref(), Some("unix:path=/x"));
    }

    #[test]
    fn bad_fds() {
        for fd in [
            "x",
            "-1",
            "3x",
            "",
            " ",
            "2147483648",
            "99999999999999999999",
            "0x3",
            "+",
            "-",
        ] {
            let arg = format!("--print-pid={fd}");
            let r = p(&["--session", &arg]);
            if fd.is_empty() {
                assert_eq!(r.unwrap().print_pid, Some(1));
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.message, format!("Invalid file descriptor: \"{fd}\""));
            }
        }
        // strtol accepts leading blanks and a sign.
        assert_eq!(
            p(&["--session", "--print-pid= 7"]).unwrap().print_pid,
            Some(7)
        );
        assert_eq!(
            p(&["--session", "--print-pid=+7"]).unwrap().print_pid,
            Some(7)
        );
        assert_eq!(
            p(&["--session", "--print-pid=-0"]).unwrap().print_pid,
            Some(0)
        );
        assert_eq!(
            p(&["--session", "--print-pid=2147483647"])
                .unwrap()
                .print_pid,
            Some(i32::MAX)
        );
    }

    #[test]
    fn unknown_and_missing() {
        for args in [
            &["--bogus", "--session"][..],
            &["--session", "--ready-event-handle=3"][..],
            &["--session", "x"][..],
        ] {
            let e = p(args).unwrap_err();
            assert!(e.show_usage && e.message.is_empty(), "{args:?}");
            assert_eq!(e.to_string(), usage());
        }
        let o = p(&[]).expect("no config file means the built-in default");
        assert!(o.config_file.is_none());
    }

    #[test]
    fn early_exit_options() {
        assert!(p(&["--help"]).unwrap().help);
        assert!(p(&["-h", "--bogus"]).unwrap().help);
        assert!(p(&["-?"]).unwrap().help);
        assert!(p(&["--version", "--bogus"]).unwrap().version);
        assert!(p(&["--session", "--introspect"]).unwrap().introspect);
        // Arguments before are still checked.
        assert!(p(&["--bogus", "--version"]).is_err());
        // --help wins even where a value is expected.
        assert!(p(&["--config-file", "--help"]).unwrap().help);
    }

    #[test]
    fn flags() {
        let o = p(&[
            "--session",
            "--nofork",
            "--fork",
            "--nopidfile",
            "--systemd-activation",
        ])
        .unwrap();
        assert_eq!(o.fork, Some(true));
        assert!(o.nopidfile && o.systemd_activation);
        assert_eq!(p(&["--session"]).unwrap().syslog, None);
        assert_eq!(
            p(&["--session", "--syslog"]).unwrap().syslog,
            Some(SyslogMode::Always)
        );
        assert_eq!(
            p(&["--session", "--nosyslog"]).unwrap().syslog,
            Some(SyslogMode::Never)
        );
        assert_eq!(
            p(&["--session", "--syslog", "--nosyslog"]).unwrap().syslog,
            Some(SyslogMode::Never)
        );
        assert_eq!(
            p(&["--session", "--nosyslog", "--syslog"]).unwrap().syslog,
            Some(SyslogMode::Always)
        );
        // dbus-daemon keeps the "only" bit once set.
        assert_eq!(
            p(&["--session", "--syslog-only", "--syslog"])
                .unwrap()
                .syslog,
            Some(SyslogMode::Only)
        );
        assert_eq!(
            p(&["--session", "--syslog-only", "--nosyslog"])
                .unwrap()
                .syslog,
            Some(SyslogMode::Never)
        );
    }
}
