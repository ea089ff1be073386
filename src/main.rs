//! `sluicebus`: command-line entry point. Parses dbus-daemon's options, loads the config,
//! binds the listeners, prints the address, daemonizes when asked, writes the pid, and runs the
//! reactor, in the order dbus-daemon's `bus_context_new` (bus/bus.c) takes these steps:
//! launchers depend on it.

// The few system calls that need `unsafe` are in `sluicebus::sys`.
#![deny(unsafe_code)]

use sluicebus::bus::{Bus, BusOptions};
use sluicebus::daemon::{self, Forked};
use sluicebus::reactor::listener::{self, Bound};
use sluicebus::reactor::Reactor;
use sluicebus::wire::address::{self, ListenAddress};
use sluicebus::{cli, config};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // First of all, so that nothing we open (listeners, pid file) can become fd 0–2.
    let _ = daemon::sanitize_std_fds();
    let _ = daemon::block_shutdown_signals();
    daemon::init_logging();
    sluicebus::sys::tune_allocator();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            daemon::report_fatal(&format!("sluicebus: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Socket files to unlink when the process ends, whatever way `run` leaves (the reactor
/// removes them too on a clean stop; removing twice is harmless). Not run in the parent after
/// a fork, which leaves with `_exit`.
struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes the pid file the process wrote when it ends.
struct PidFile(Option<PathBuf>);

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            daemon::remove_pidfile(p);
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(args.iter().cloned()) {
        Ok(o) => o,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("{}", e.message);
            }
            if e.show_usage {
                eprintln!("{}", cli::usage());
            }
            std::process::exit(1);
        }
    };
    if opts.help {
        eprintln!("{}", cli::usage());
        std::process::exit(1);
    }
    if opts.version {
        print!("{}", cli::version_text("sluicebus", cli::FEATURES));
        return Ok(());
    }
    if opts.introspect {
        print!(
            "{}",
            sluicebus::bus::driver::introspect(sluicebus::bus::DRIVER_PATH)
        );
        return Ok(());
    }
    daemon::cloexec_inherited_fds();

    let config = match &opts.config_file {
        Some(path) => config::load(path).map_err(|e| e.to_string())?,
        None => config::builtin_session(),
    };
    // dbus-daemon insists on <listen> even when --address replaces it (observed with 1.14).
    config.validate_has_listen().map_err(|e| e.to_string())?;
    let listen: Vec<String> = match &opts.address {
        Some(a) => vec![a.clone()],
        None => config.listen.clone(),
    };
    let system_bus = opts.system || config.bus_type.as_deref() == Some("system");
    daemon::set_log_mode(opts.syslog, config.syslog, system_bus);
    // Once the log goes where it was told to, and before the address is printed, so that
    // whoever reads it finds the bus as it will run (a fork keeps the slice).
    match sluicebus::sys::lengthen_time_slice() {
        Some(ns) => log::debug!("time slice {} µs", ns / 1000),
        None => log::debug!("time slice left as it was"),
    }

    // The transient service directory exists only with <standard_session_servicedirs/>.
    if let Some(dir) = daemon::runtime_servicedir() {
        if config.servicedirs.contains(&dir) {
            if let Some(runtime) = dir.parent().and_then(|p| p.parent()) {
                if let Err(e) = daemon::ensure_runtime_servicedir(runtime) {
                    log::warn!("cannot create the transient service directory: {e}");
                }
            }
        }
    }

    let pidfile = if opts.nopidfile {
        None
    } else {
        config.pidfile.clone()
    };
    if let Some(p) = &pidfile {
        daemon::check_pidfile_absent(p).map_err(|e| e.to_string())?;
    }

    let mut bound: Vec<Bound> = Vec::new();
    let mut sockets = SocketFiles(Vec::new());
    for text in &listen {
        let new = listen_on_first(text)?;
        sockets
            .0
            .extend(new.iter().filter_map(|b| b.cleanup.clone()));
        bound.extend(new);
    }
    // dbus-daemon prints the last <listen> first.
    let printed: Vec<&str> = bound.iter().rev().map(|b| b.address.as_str()).collect();
    let address_line = printed.join(";");

    // The address goes out before forking, so a launcher can read it as soon as we exit.
    if let Some(fd) = opts.print_address {
        daemon::print_to_fd(fd, &format!("{address_line}\n")).map_err(|e| e.to_string())?;
        if opts.print_pid != Some(fd) {
            daemon::close_print_fd(fd);
        }
    }

    let fork = opts.fork.unwrap_or(config.fork);
    let mut pid_guard = PidFile(None);
    if fork {
        match daemon::fork_daemon(config.keep_umask).map_err(|e| e.to_string())? {
            Forked::Parent(child) => {
                let code =
                    match report_pid(pidfile.as_deref(), opts.print_pid, child.as_raw() as u32) {
                        Ok(()) => 0,
                        Err(e) => {
                            daemon::report_fatal(&format!("sluicebus: {e}"));
                            let _ =
                                nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGTERM);
                            1
                        }
                    };
                daemon::parent_exit(code);
            }
            // The parent wrote the pid file; it is ours to remove.
            Forked::Child => pid_guard.0 = pidfile.clone(),
        }
    } else {
        if let Some(p) = &pidfile {
            daemon::write_pidfile(p, std::process::id()).map_err(|e| e.to_string())?;
            pid_guard.0 = Some(p.clone());
        }
        report_pid(None, opts.print_pid, std::process::id()).map_err(|e| e.to_string())?;
    }

    // Once per start, at info level: a fixed limit is normal in containers and for services
    // without CAP_SYS_RESOURCE, and dbus-daemon logs it at its INFO level.
    if let Err(e) = daemon::raise_fd_limit() {
        log::info!("{e}");
    }
    if let Some(user) = &config.user {
        daemon::switch_user(user).map_err(|e| e.to_string())?;
    }

    let options = BusOptions {
        systemd_activation: opts.systemd_activation,
        address: address_line,
    };
    let bus = Bus::new(config, options, sluicebus::reactor::host_facts());
    // Created only now: the epoll set and the signalfd/blocked mask must belong to the daemon
    // process, not to the parent that exited after the fork.
    let mut reactor =
        Reactor::new(bus, bound, opts.config_file.clone()).map_err(|e| e.to_string())?;
    if let Err(e) = daemon::sd_notify("READY=1") {
        log::warn!("cannot notify the service manager: {e}");
    }
    let result = reactor.run().map_err(|e| e.to_string());
    let _ = daemon::sd_notify("STOPPING=1");
    drop(reactor);
    drop(sockets);
    drop(pid_guard);
    result
}

/// Listen on one `<listen>` (or `--address`) string as dbus-daemon's `dbus_server_listen`
/// does: its `;`-separated entries are alternatives, tried in order, and the first that can
/// listen is the one used. An entry of an unknown transport is skipped, a malformed entry
/// reached is an error, and one that fails to bind moves on to the next; when none
/// listens, the first bind failure is the error.
fn listen_on_first(text: &str) -> Result<Vec<Bound>, String> {
    let entries = address::parse_listen_entries(text).map_err(|e| format!("{text}: {e}"))?;
    let mut unknown = None;
    let mut first_failure = None;
    for (entry, parsed) in entries {
        let a = match parsed {
            Ok(a) => a,
            Err(
                e @ (address::AddressError::UnknownTransport(_)
                | address::AddressError::UnsupportedTransport(_)),
            ) => {
                unknown.get_or_insert_with(|| format!("{entry}: {e}"));
                continue;
            }
            Err(e) => return Err(format!("{entry}: {e}")),
        };
        let guid = sluicebus::auth_world::new_guid();
        let result = if matches!(a, ListenAddress::Systemd) {
            listener::systemd_listeners(&guid)
        } else {
            listener::bind(&a, &guid).map(|b| vec![b])
        };
        match result {
            Ok(new) => return Ok(new),
            Err(e) => {
                log::debug!("cannot listen on {entry}: {e}");
                first_failure.get_or_insert_with(|| format!("Failed to bind {entry}: {e}"));
            }
        }
    }
    Err(first_failure
        .or(unknown)
        .unwrap_or_else(|| format!("{text}: {}", address::AddressError::Empty)))
}

/// Write the pid file (if any) and the `--print-pid` line (if asked).
fn report_pid(
    pidfile: Option<&std::path::Path>,
    print_pid: Option<i32>,
    pid: u32,
) -> Result<(), daemon::DaemonError> {
    if let Some(p) = pidfile {
        daemon::write_pidfile(p, pid)?;
    }
    if let Some(fd) = print_pid {
        daemon::print_to_fd(fd, &format!("{pid}\n"))?;
        daemon::close_print_fd(fd);
    }
    Ok(())
}
