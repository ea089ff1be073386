//! The bus watches its configuration and service directories (inotify) and reloads when a
//! `.conf` or `.service` file in them is written, removed or renamed, as dbus-daemon does:
//! new services become activatable and policy edits apply without SIGHUP or ReloadConfig.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHANGED: &str = "ActivatableServicesChanged";

/// A bus whose config (in its temp dir) adds `extra` and a service directory `services/`.
fn bus_with_service_dir(extra: &str) -> (TestBus, PathBuf) {
    // The service directory must exist before the bus starts, to be watched.
    let bus = TestBus::start();
    // One round trip: the event loop (and with it the directory watch) is running.
    bus.client().driver("GetId", &[]).expect_return();
    let services = bus.dir().join("services");
    std::fs::create_dir_all(&services).unwrap();
    let conf = session_config(&format!(
        "<servicedir>{}</servicedir>{extra}",
        services.display()
    ));
    std::fs::write(bus.dir().join("bus.conf"), conf).unwrap();
    // That write was itself a change to a watched directory: wait for the reload, then make
    // one round trip so the watch has been re-aimed at the new service directory too.
    assert!(
        eventually(Duration::from_secs(5), || bus
            .stderr()
            .contains("Reloaded configuration")),
        "editing the config file caused no reload"
    );
    let mut c = bus.client();
    c.driver("GetId", &[]).expect_return();
    (bus, services)
}

fn activatable(c: &mut RawConn, name: &str) -> bool {
    c.driver("ListActivatableNames", &[])
        .expect_return()
        .arg_strs(0)
        .iter()
        .any(|x| x == name)
}

fn write_service(dir: &Path, name: &str) {
    // Written under a temporary name and renamed into place, as package managers do.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, service_file_text(name, "/bin/false")).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.service"))).unwrap();
}

#[test]
fn new_service_file_is_announced_and_listed() {
    let (mut bus, services) = bus_with_service_dir("");
    let mut c = bus.client();
    c.add_match(&format!("type='signal',member='{CHANGED}'"));
    assert!(!activatable(&mut c, "org.example.Watched"));
    write_service(&services, "org.example.Watched");
    let (_, got) = c.recv_until(Duration::from_secs(5), |m| m.is_driver_signal(CHANGED));
    assert!(got.is_some(), "no {CHANGED} after a service file appeared");
    // Listed without any lookup of the name having caused a rescan.
    assert!(activatable(&mut c, "org.example.Watched"));
    // Removing it is noticed the same way.
    std::fs::remove_file(services.join("org.example.Watched.service")).unwrap();
    let (_, got) = c.recv_until(Duration::from_secs(5), |m| m.is_driver_signal(CHANGED));
    assert!(got.is_some(), "no {CHANGED} after a service file went away");
    assert!(!activatable(&mut c, "org.example.Watched"));
    bus.assert_alive();
}

#[test]
fn service_file_written_just_before_a_call_is_found() {
    // With the directory watched the bus answers lookup misses from its table, without
    // rescanning; the event of a file written before the call was sent is handled before
    // the call, so writing a service file and then calling its name works at once, as with
    // dbus-daemon's rescan on every miss.
    let (mut bus, services) = bus_with_service_dir("");
    let mut c = bus.client();
    let name = "org.example.JustWritten";
    let serial = c.call(Some(name), "/", Some("org.example.I"), "M", &[]);
    c.wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.ServiceUnknown");
    write_service(&services, name);
    let serial = c.call(Some(name), "/", Some("org.example.I"), "M", &[]);
    // Its Exec is /bin/false: the start is attempted and fails.
    c.wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.Spawn.ChildExited");
    bus.assert_alive();
}

#[test]
fn unrelated_files_cause_no_reload() {
    let (mut bus, services) = bus_with_service_dir("");
    let mut c = bus.client();
    c.add_match(&format!("type='signal',member='{CHANGED}'"));
    let reloads = |bus: &TestBus| bus.stderr().matches("Reloaded configuration").count();
    let before = reloads(&bus);
    std::fs::write(services.join("README"), "not a service").unwrap();
    std::fs::write(bus.dir().join("notes.txt"), "not a config").unwrap();
    // The bus reads the watch between handling messages: after two round trips it has
    // read those events (a reload would already have announced itself).
    let mut seen = c.sync();
    seen.extend(c.sync());
    assert!(
        !seen.iter().any(|m| m.is_driver_signal(CHANGED)),
        "a reload for a file that is neither .conf nor .service: {seen:#?}"
    );
    // Sentinel: a service file, whose event comes after theirs in the same inotify queue.
    // The first announcement must already be the reload that lists it.
    write_service(&services, "org.example.Sentinel");
    let (_, got) = c.recv_until(TIMEOUT, |m| m.is_driver_signal(CHANGED));
    assert!(got.is_some(), "no {CHANGED} after a service file appeared");
    assert!(
        activatable(&mut c, "org.example.Sentinel"),
        "a reload before the sentinel's, for a file that is neither .conf nor .service"
    );
    assert!(eventually(TIMEOUT, || reloads(&bus) > before));
    assert_eq!(
        reloads(&bus),
        before + 1,
        "reloads other than the sentinel's:\n{}",
        bus.stderr()
    );
    bus.assert_alive();
}

#[test]
fn policy_edit_applies_without_sighup() {
    let deny = r#"<policy context="default"><deny own="org.example.Denied"/></policy>"#;
    let (mut bus, _) = bus_with_service_dir(deny);
    let mut c = bus.client();
    assert!(
        eventually(Duration::from_secs(5), || {
            c.driver("RequestName", &[s("org.example.Denied"), Arg::U32(0)])
                .error_name
                .is_some()
        }),
        "the deny rule never applied"
    );
    // Drop the deny rule by rewriting the file: the next RequestName may succeed.
    std::fs::write(bus.dir().join("bus.conf"), session_config("")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            c.driver("RequestName", &[s("org.example.Denied"), Arg::U32(0)])
                .error_name
                .is_none()
        }),
        "the edited policy never applied"
    );
    // A broken edit keeps the running configuration and says why.
    std::fs::write(bus.dir().join("bus.conf"), "<busconfig><bogus/>").unwrap();
    assert!(eventually(Duration::from_secs(5), || bus
        .stderr()
        .contains("Unable to reload configuration")));
    bus.assert_alive();
}
