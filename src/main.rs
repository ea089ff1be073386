//! `sluicebus`: command-line entry point. Parses dbus-daemon's options, loads the config,
//! binds the listeners, prints the address and pid, and runs the reactor.

use sluicebus::bus::{Bus, BusOptions};
use sluicebus::reactor::listener::{self, Bound};
use sluicebus::reactor::Reactor;
use sluicebus::wire::address::{self, ListenAddress};
use sluicebus::{cli, config};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluicebus: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Write `line` to the fd named on the command line (1 = stdout), closing it after unless it
/// is one of the standard streams.
fn print_to_fd(fd: i32, line: &str) -> Result<(), String> {
    if fd == 1 {
        let mut out = std::io::stdout();
        out.write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
        return Ok(());
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|_| format!("Invalid file descriptor: {fd}"))?;
    let borrowed = sluicebus::reactor::sys::borrow_fd(fd);
    let mut buf = line.as_bytes();
    while !buf.is_empty() {
        match nix::unistd::write(borrowed, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("cannot write to fd {fd}: {e}")),
        }
    }
    if fd > 2 {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            eprint!("{}", cli::usage());
            std::process::exit(1);
        }
    };
    if opts.help {
        eprint!("{}", cli::usage());
        std::process::exit(1);
    }
    if opts.version {
        println!(
            "sluicebus {} (D-Bus message bus, drop-in for dbus-daemon)",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(());
    }
    if opts.introspect {
        print!(
            "{}",
            sluicebus::bus::driver::introspect(sluicebus::bus::DRIVER_PATH)
        );
        return Ok(());
    }
    let config = match &opts.config_file {
        Some(path) => config::load(path).map_err(|e| e.to_string())?,
        None => config::builtin_session(),
    };
    let listen: Vec<String> = match &opts.address {
        Some(a) => vec![a.clone()],
        None => config.listen.clone(),
    };
    if listen.is_empty() {
        return Err("no <listen> address in the configuration and no --address given".into());
    }
    let mut bound: Vec<Bound> = Vec::new();
    for text in &listen {
        let addrs = address::parse_listen(text).map_err(|e| format!("{text}: {e}"))?;
        for a in addrs {
            let guid = sluicebus::wire::auth::new_guid();
            if matches!(a, ListenAddress::Systemd) {
                bound.extend(listener::systemd_listeners(&guid).map_err(|e| e.to_string())?);
            } else {
                bound.push(
                    listener::bind(&a, &guid).map_err(|e| format!("Failed to bind {text}: {e}"))?,
                );
            }
        }
    }
    // dbus-daemon prints the last <listen> first.
    let printed: Vec<&str> = bound.iter().rev().map(|b| b.address.as_str()).collect();
    let address_line = printed.join(";");
    let options = BusOptions {
        systemd_activation: opts.systemd_activation,
        address: address_line.clone(),
    };
    let bus = Bus::new(config, options);
    let mut reactor =
        Reactor::new(bus, bound, opts.config_file.clone()).map_err(|e| e.to_string())?;
    if let Some(fd) = opts.print_address {
        print_to_fd(fd, &format!("{address_line}\n"))?;
    }
    if let Some(fd) = opts.print_pid {
        print_to_fd(fd, &format!("{}\n", std::process::id()))?;
    }
    reactor.run().map_err(|e| e.to_string())
}
