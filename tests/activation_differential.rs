//! Activation side by side with dbus-daemon: the same service directory (services that own
//! their name, exit with a status, are killed by a signal, cannot be executed, never own
//! the name, have broken or incomplete service files, name another service, report their
//! environment) behind sluicebus and behind the reference dbus-daemon, and what
//! StartServiceByName, an auto-starting call and a call with NO_AUTO_START get from each,
//! compared: the reply code or the error name. Any difference fails and prints both.

mod common;

use common::*;
use std::path::Path;

/// A service that owns the name in its first argument and serves until the bus goes away.
const OWNER_PY: &str = r#"
import os, sys
import dbus, dbus.bus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(os.environ["DBUS_STARTER_ADDRESS"])
bus.request_name(sys.argv[1])
loop = GLib.MainLoop()
bus.call_on_disconnection(lambda _c: loop.quit())
loop.run()
"#;

/// The service files (name, file contents after `[D-BUS Service]`) of one side, in `dir`.
fn services(dir: &Path) -> Vec<(&'static str, String)> {
    let owner = dir.join("owner.py");
    std::fs::write(&owner, OWNER_PY).expect("write owner.py");
    let env_file = dir.join("env.txt");
    vec![
        (
            "com.example.Good",
            format!(
                "Name=com.example.Good\nExec=/usr/bin/python3 {} com.example.Good\n",
                owner.display()
            ),
        ),
        ("com.example.Exit3", "Name=com.example.Exit3\nExec=/bin/sh -c 'exit 3'\n".into()),
        ("com.example.Exit0", "Name=com.example.Exit0\nExec=/bin/true\n".into()),
        (
            "com.example.Killed",
            "Name=com.example.Killed\nExec=/bin/sh -c 'kill -9 $$'\n".into(),
        ),
        (
            "com.example.Missing",
            "Name=com.example.Missing\nExec=/nonexistent/sluicebus-test-binary\n".into(),
        ),
        ("com.example.NoExec", "Name=com.example.NoExec\n".into()),
        (
            "com.example.Systemd",
            "Name=com.example.Systemd\nSystemdService=sluicebus-test.service\n".into(),
        ),
        (
            "com.example.BadQuote",
            "Name=com.example.BadQuote\nExec=/bin/echo \"unterminated\n".into(),
        ),
        ("com.example.EmptyExec", "Name=com.example.EmptyExec\nExec=\n".into()),
        ("com.example.SpacesExec", "Name=com.example.SpacesExec\nExec=   \n".into()),
        ("com.example.BadName", "Name=com.example.1Bad\nExec=/bin/true\n".into()),
        (
            "com.example.FileName",
            format!(
                "Name=com.example.Other\nExec=/usr/bin/python3 {} com.example.Other\n",
                owner.display()
            ),
        ),
        (
            "com.example.Env",
            format!(
                "Name=com.example.Env\nExec=/bin/sh -c 'env | grep ^DBUS_ | cut -d= -f1 | sort > {}; exit 1'\n",
                env_file.display()
            ),
        ),
    ]
}

struct Side {
    bus: TestBus,
    dir: TempDir,
}

impl Side {
    fn start(daemon: &Path) -> Side {
        let dir = TempDir::new("activation");
        let svc = dir.path().join("services");
        std::fs::create_dir(&svc).expect("service dir");
        for (file, body) in services(dir.path()) {
            std::fs::write(
                svc.join(format!("{file}.service")),
                format!("[D-BUS Service]\n{body}"),
            )
            .expect("write service file");
        }
        // A service that exits 0 without its name leaves the start to this timeout, on
        // both buses.
        let extra = format!(
            "<servicedir>{}</servicedir><limit name=\"service_start_timeout\">2000</limit>",
            svc.display()
        );
        let bus = TestBus::with_daemon(daemon, &session_config(&extra));
        Side { bus, dir }
    }

    /// StartServiceByName's reply code or error name.
    fn start_service(&self, name: &str) -> String {
        let mut c = self.bus.client();
        let r = c.driver("StartServiceByName", &[s(name), Arg::U32(0)]);
        match r.msg_type {
            msg_type::METHOD_RETURN => format!("start: {}", r.arg_u32(0)),
            _ => format!("start: {}", r.error_name.unwrap_or_default()),
        }
    }

    /// What a call to `name` gets: a return, or the error name (`flags` on the call).
    fn call(&self, name: &str, flags: u8) -> String {
        let mut c = self.bus.client();
        let serial = c.send(MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            flags,
            path: Some("/"),
            interface: Some("org.freedesktop.DBus.Peer"),
            member: Some("Ping"),
            destination: Some(name),
            ..Default::default()
        });
        let r = c.wait_reply(serial);
        match r.msg_type {
            msg_type::METHOD_RETURN => format!("call({flags}): return"),
            _ => format!("call({flags}): {}", r.error_name.unwrap_or_default()),
        }
    }

    /// The DBUS_* variables the Env service saw (names only), once it has run.
    fn starter_env(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("env.txt"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[test]
fn activation_matches_dbus_daemon() {
    let sides = [
        ("sluicebus", Side::start(&daemon_path())),
        ("dbus-daemon", Side::start(&reference_daemon())),
    ];
    let names = [
        "com.example.Good",
        "com.example.Exit3",
        "com.example.Exit0",
        "com.example.Killed",
        "com.example.Missing",
        "com.example.NoExec",
        "com.example.Systemd",
        "com.example.BadQuote",
        "com.example.EmptyExec",
        "com.example.SpacesExec",
        "com.example.FileName",
        "com.example.Other",
        "com.example.Env",
        "com.example.Unknown",
    ];
    let mut transcripts = Vec::new();
    for (_, side) in &sides {
        let mut t = String::new();
        for name in names {
            // NO_AUTO_START first (nothing is started), then an auto-starting call, then
            // StartServiceByName (which finds it running, or fails again).
            t += &format!("{name} {}\n", side.call(name, 2));
            t += &format!("{name} {}\n", side.call(name, 0));
            t += &format!("{name} {}\n", side.start_service(name));
        }
        t += &format!("starter environment: {}\n", side.starter_env());
        transcripts.push(t);
    }
    if std::env::var_os("ACTIVATION_DIFFERENTIAL_TABLE").is_some() {
        eprintln!(
            "-- sluicebus\n{}-- dbus-daemon\n{}",
            transcripts[0], transcripts[1]
        );
    }
    assert_eq!(
        transcripts[0], transcripts[1],
        "\n-- sluicebus\n{}-- dbus-daemon\n{}",
        transcripts[0], transcripts[1]
    );
}

/// A service file the test put in the system service directory, removed when dropped.
struct SystemServiceFile(std::path::PathBuf);

impl Drop for SystemServiceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The stock system.conf as each bus runs it here: under its `<user>` (the launch helper
/// accepts only that user as its caller) with the stock `<servicehelper>`, but without pid
/// file, syslog or fork, and with the relative system.d include made absolute.
fn system_config() -> Option<String> {
    let text = std::fs::read_to_string("/usr/share/dbus-1/system.conf").ok()?;
    let mut t = text.replace("<fork/>", "").replace("<syslog/>", "");
    if let (Some(a), Some(b)) = (t.find("<pidfile>"), t.find("</pidfile>")) {
        t.replace_range(a..b + "</pidfile>".len(), "");
    }
    let t = t.replace(
        "<includedir>system.d</includedir>",
        "<includedir>/usr/share/dbus-1/system.d</includedir>",
    );
    (t.contains("<servicehelper>") && t.contains("<user>")).then_some(t)
}

/// System-bus activation through the real setuid launch helper, on both buses: the helper
/// runs the service as the `User` of its file (which records its uid), and the helper's
/// exit status (here the service's own: 6) becomes the same error on both; a service file
/// without `User` is refused by both before anything runs.
#[test]
fn system_bus_activation_through_the_launch_helper_matches_dbus_daemon() {
    const TEST: &str = "system_bus_activation_through_the_launch_helper_matches_dbus_daemon";
    const HELPER: &str = "/usr/lib/dbus-1.0/dbus-daemon-launch-helper";
    if !running_as_root() {
        return skip(TEST, "needs root (the bus switches to messagebus)");
    }
    if !Path::new(HELPER).exists() {
        return skip(
            TEST,
            "needs dbus-daemon and its launch helper (Debian's dbus-daemon)",
        );
    }
    let Some(conf) = system_config() else {
        return skip(
            TEST,
            "no stock /usr/share/dbus-1/system.conf with a servicehelper",
        );
    };
    let out = TempDir::new("helper-out");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let dir = Path::new("/usr/share/dbus-1/system-services");
    let tag = std::process::id();
    let with_user = format!("org.sluicebus.Test.Helper{tag}");
    let without_user = format!("org.sluicebus.Test.NoUser{tag}");
    let _files: Vec<SystemServiceFile> = [
        (
            &with_user,
            format!(
                "User=nobody\nExec=/bin/sh -c 'id -u > {}/$0; exit 6' uid\n",
                out.path().display()
            ),
        ),
        (&without_user, "Exec=/bin/true\n".to_string()),
    ]
    .into_iter()
    .map(|(name, rest)| {
        let path = dir.join(format!("{name}.service"));
        std::fs::write(&path, format!("[D-BUS Service]\nName={name}\n{rest}"))
            .expect("write system service file");
        SystemServiceFile(path)
    })
    .collect();
    let mut transcripts = Vec::new();
    for daemon in [daemon_path(), reference_daemon()] {
        let bus = TestBus::with_daemon(&daemon, &conf);
        let mut c = bus.client();
        let mut t = String::new();
        for name in [&with_user, &without_user] {
            let r = c.driver("StartServiceByName", &[s(name), Arg::U32(0)]);
            t += &format!(
                "{}: {:?} {:?}\n",
                if name == &with_user {
                    "with User"
                } else {
                    "without User"
                },
                r.error_name,
                r.args.first()
            );
        }
        let uid = std::fs::read_to_string(out.path().join("uid")).unwrap_or_default();
        let _ = std::fs::remove_file(out.path().join("uid"));
        t += &format!("service ran as uid {}\n", uid.trim());
        if std::env::var_os("ACTIVATION_DIFFERENTIAL_TABLE").is_some() {
            eprintln!("-- {}\n{t}", daemon.display());
        }
        transcripts.push(t);
    }
    assert!(
        transcripts[1].contains("ran as uid 65534"),
        "the reference did not run the service as nobody:\n{}",
        transcripts[1]
    );
    assert_eq!(
        transcripts[0], transcripts[1],
        "\n-- sluicebus\n{}-- dbus-daemon\n{}",
        transcripts[0], transcripts[1]
    );
}
