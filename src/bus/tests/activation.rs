//! Activation without processes: auto-start and StartServiceByName queue behind a spawn
//! request, are released when the service takes its name, and fail on spawn errors,
//! non-zero exits and `service_start_timeout` (virtual time).

use super::harness::*;
use std::time::Duration;

const SVC: &str = "com.example.Svc";
const TIMED_OUT: &str = "org.freedesktop.DBus.Error.TimedOut";

fn harness(limits: &[(&str, i64)]) -> Harness {
    Harness::with_services(&[(SVC, "/usr/bin/example-svc --flag")], limits)
}

/// The activated service arrives: connects, registers and takes its name.
fn service_arrives(h: &mut Harness) -> Client {
    let svc = h.client();
    let serial = h.call(svc, DBUS, DBUS_PATH, DBUS_IFACE, "RequestName", &su(SVC, 0));
    assert_eq!(h.reply(svc, serial).arg_u32(0), 1);
    svc
}

#[test]
fn auto_start_queues_the_call_until_the_name_is_taken() {
    let mut h = harness(&[]);
    let caller = h.client();
    let serial = h.call(caller, SVC, "/", "com.example.I", "Hello", &s("queued"));
    assert_eq!(h.spawned(), [SVC]);
    assert!(
        h.recv(caller).is_none(),
        "nothing until the service is there"
    );
    // A second call while the start is pending spawns nothing more.
    let serial2 = h.call(caller, SVC, "/", "com.example.I", "Again", &empty());
    assert_eq!(h.spawned(), [SVC]);
    h.service_started(SVC, 4242);
    let svc = h.client();
    let rs = h.call(svc, DBUS, DBUS_PATH, DBUS_IFACE, "RequestName", &su(SVC, 0));
    // The RequestName reply comes first, then the waiting calls, in order.
    let got = h.recv_all(svc);
    let kinds: Vec<String> = got.iter().map(Msg::kind).collect();
    assert_eq!(
        kinds,
        ["signal:NameAcquired", "return", "call:Hello", "call:Again"]
    );
    assert_eq!(got[1].reply_serial, Some(rs));
    assert_eq!(got[2].serial, serial);
    assert_eq!(got[2].sender, Some(h.unique(caller)));
    assert_eq!(got[2].destination.as_deref(), Some(SVC));
    assert_eq!(got[2].arg_str(0), "queued");
    assert_eq!(got[3].serial, serial2);
    // The reply is tracked as for any call.
    h.send(svc, reply_to(&got[2]), &s("done"));
    let r = h.recv(caller).unwrap().expect_return();
    assert_eq!(
        (r.reply_serial, r.arg_str(0)),
        (Some(serial), "done".to_string())
    );
    // Once running, calls go straight through.
    h.call(caller, SVC, "/", "com.example.I", "Direct", &empty());
    assert_eq!(h.recv(svc).unwrap().member.as_deref(), Some("Direct"));
    assert_eq!(h.spawned(), [SVC]);
}

#[test]
fn start_service_by_name_answers_when_the_name_is_taken() {
    let mut h = harness(&[]);
    let (a, b) = (h.client(), h.client());
    let sa = h.call(
        a,
        DBUS,
        DBUS_PATH,
        DBUS_IFACE,
        "StartServiceByName",
        &su(SVC, 0),
    );
    let sb = h.call(
        b,
        DBUS,
        DBUS_PATH,
        DBUS_IFACE,
        "StartServiceByName",
        &su(SVC, 0),
    );
    assert_eq!(h.spawned(), [SVC]);
    assert!(h.try_reply(a, sa).is_none() && h.try_reply(b, sb).is_none());
    service_arrives(&mut h);
    assert_eq!(
        h.reply(a, sa).expect_return().arg_u32(0),
        1,
        "START_REPLY_SUCCESS"
    );
    assert_eq!(h.reply(b, sb).expect_return().arg_u32(0), 1);
    // Now running: ALREADY_RUNNING, nothing spawned.
    assert_eq!(h.driver(a, "StartServiceByName", &su(SVC, 0)).arg_u32(0), 2);
    assert_eq!(h.spawned(), [SVC]);
    let names = h.driver(a, "ListActivatableNames", &empty()).arg_strs(0);
    assert!(names.iter().any(|n| n == SVC), "{names:?}");
}

#[test]
fn no_auto_start_does_not_activate() {
    let mut h = harness(&[]);
    let c = h.client();
    h.send(
        c,
        method_call(Some(SVC), "/", Some("com.example.I"), "M").flags(flag::NO_AUTO_START),
        &empty(),
    );
    h.recv(c).unwrap().expect_error(err::NAME_HAS_NO_OWNER);
    assert!(h.spawned().is_empty());
}

#[test]
fn start_timeout_fails_the_waiters_in_virtual_time() {
    let mut h = harness(&[("service_start_timeout", 1000)]);
    let caller = h.client();
    let s1 = h.call(caller, SVC, "/", "com.example.I", "M", &empty());
    let s2 = h.call(
        caller,
        DBUS,
        DBUS_PATH,
        DBUS_IFACE,
        "StartServiceByName",
        &su(SVC, 0),
    );
    h.advance(Duration::from_millis(999));
    assert!(h.recv(caller).is_none());
    h.advance(Duration::from_millis(1));
    let got = h.recv_all(caller);
    let mut serials: Vec<u32> = got
        .iter()
        .map(|m| {
            assert_eq!(m.error_name.as_deref(), Some(TIMED_OUT), "{m:#?}");
            assert_eq!(m.arg_str(0), format!("Activation of {SVC} timed out"));
            m.reply_serial.unwrap()
        })
        .collect();
    serials.sort();
    assert_eq!(serials, vec![s1, s2]);
    // A later call starts it again.
    h.call(caller, SVC, "/", "com.example.I", "M", &empty());
    assert_eq!(h.spawned(), [SVC, SVC]);
}

#[test]
fn spawn_failure_and_child_exit_fail_the_waiters() {
    let mut h = harness(&[]);
    let caller = h.client();
    let s1 = h.call(caller, SVC, "/", "com.example.I", "M", &empty());
    h.service_spawn_failed(SVC, "Failed to execute program /usr/bin/example-svc: nope");
    let e = h
        .recv(caller)
        .unwrap()
        .expect_error("org.freedesktop.DBus.Error.Spawn.ExecFailed");
    assert_eq!(e.reply_serial, Some(s1));
    assert_eq!(
        e.arg_str(0),
        "Failed to execute program /usr/bin/example-svc: nope"
    );
    // Second attempt: the process runs, exits 0 (daemonized), then its child dies badly.
    let s2 = h.call(caller, SVC, "/", "com.example.I", "M", &empty());
    h.service_started(SVC, 777);
    h.service_exited(777, Some(0), None);
    assert!(h.recv(caller).is_none(), "exit status 0 is not a failure");
    h.service_exited(778, Some(1), None);
    assert!(h.recv(caller).is_none(), "another pid is not the service");
    let s3 = h.call(caller, SVC, "/", "com.example.I", "M", &empty());
    assert_eq!(h.spawned(), [SVC, SVC], "still pending: no second spawn");
    h.service_started(SVC, 779);
    h.service_exited(779, Some(3), None);
    let got = h.recv_all(caller);
    let names: Vec<(Option<u32>, Option<String>)> = got
        .iter()
        .map(|m| (m.reply_serial, m.error_name.clone()))
        .collect();
    let exited = Some("org.freedesktop.DBus.Error.Spawn.ChildExited".to_string());
    assert_eq!(names, vec![(Some(s2), exited.clone()), (Some(s3), exited)]);
    assert_eq!(
        got[0].arg_str(0),
        format!("Process {SVC} exited with status 3")
    );
}

#[test]
fn waiting_messages_of_a_departed_caller_are_dropped() {
    let mut h = harness(&[]);
    let gone = h.client();
    h.call(gone, SVC, "/", "com.example.I", "Stale", &empty());
    h.disconnect(gone);
    let caller = h.client();
    h.call(caller, SVC, "/", "com.example.I", "Fresh", &empty());
    let svc = service_arrives(&mut h);
    let members: Vec<String> = h
        .recv_all(svc)
        .iter()
        .filter(|m| m.msg_type == mtype::METHOD_CALL)
        .map(|m| m.member.clone().unwrap_or_default())
        .collect();
    assert_eq!(members, ["Fresh"]);
}

#[test]
fn spawn_request_carries_exec_and_activation_environment() {
    let mut h = harness(&[]);
    let admin = h.client_as(DAEMON_UID);
    let mut env = BodyWriter::new();
    env.array("{ss}", |a| {
        a.dict_entry(|e| {
            e.str("FOO").str("bar");
        });
    });
    h.driver(admin, "UpdateActivationEnvironment", &env)
        .expect_return();
    // Invalid pairs are refused as a whole.
    let mut bad = BodyWriter::new();
    bad.array("{ss}", |a| {
        a.dict_entry(|e| {
            e.str("GOOD").str("1");
        });
        a.dict_entry(|e| {
            e.str("A=B").str("x");
        });
    });
    h.driver(admin, "UpdateActivationEnvironment", &bad)
        .expect_error(err::INVALID_ARGS);
    let c = h.client();
    h.call(c, SVC, "/", "com.example.I", "M", &empty());
    let spawn = h.spawned()[0].clone();
    assert_eq!(spawn.name, SVC);
    assert_eq!(spawn.argv, ["/usr/bin/example-svc", "--flag"]);
    assert_eq!(spawn.var("FOO"), Some("bar"));
    assert_eq!(spawn.var("GOOD"), None, "a refused update applied partly");
    assert_eq!(spawn.var("DBUS_STARTER_BUS_TYPE"), Some("session"));
}

#[test]
fn reload_config_rescans_services_and_reports_errors() {
    let mut h = harness(&[]);
    let c = h.client();
    h.driver(c, "AddMatch", &s("member='ActivatableServicesChanged'"))
        .expect_return();
    h.add_service_file("com.example.New", "/usr/bin/new");
    let serial = h.call(c, DBUS, DBUS_PATH, DBUS_IFACE, "ReloadConfig", &empty());
    let got = h.recv_all(c);
    assert!(
        got.iter()
            .any(|m| m.reply_serial == Some(serial) && m.is_return()),
        "{got:#?}"
    );
    assert_eq!(
        got.iter()
            .filter(|m| m.is_driver_signal("ActivatableServicesChanged"))
            .count(),
        1
    );
    let names = h.driver(c, "ListActivatableNames", &empty()).arg_strs(0);
    assert!(names.iter().any(|n| n == "com.example.New"), "{names:?}");
    // A broken file: Failed, the running configuration stays.
    h.write_config_file(Some("<busconfig><bogus"));
    h.driver(c, "ReloadConfig", &empty())
        .expect_error(err::FAILED);
    let names = h.driver(c, "ListActivatableNames", &empty()).arg_strs(0);
    assert!(names.iter().any(|n| n == SVC), "{names:?}");
    // A missing file: FileNotFound.
    h.write_config_file(None);
    h.driver(c, "ReloadConfig", &empty())
        .expect_error("org.freedesktop.DBus.Error.FileNotFound");
    // New limits apply to existing connections.
    let xml = format!(
        "<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen><auth>EXTERNAL</auth>\
         <policy context=\"default\"><allow user=\"*\"/><allow send_destination=\"*\"/>\
         <allow receive_sender=\"*\"/><allow own=\"*\"/></policy>{}\
         <limit name=\"max_match_rules_per_connection\">1</limit></busconfig>",
        h.servicedir_element()
    );
    h.write_config_file(Some(&xml));
    h.driver(c, "ReloadConfig", &empty()).expect_return();
    h.driver(c, "AddMatch", &s("member='Two'"))
        .expect_error(err::LIMITS_EXCEEDED);
}

/// A name nobody owns and no service file provides.
const NOBODY: &str = "com.example.Nobody";

#[test]
fn a_message_to_an_unknown_name_scans_the_directories_once() {
    let mut h = harness(&[]);
    let dir = h.service_dir();
    let c = h.client();
    h.take_listed_dirs();
    // Without a directory watch a miss rescans, as dbus-daemon does, but once per message
    // (the dispatcher's lookup is handed on to the auto-start decision).
    let serial = h.call(c, NOBODY, "/", "com.example.I", "M", &empty());
    h.reply(c, serial).expect_error(err::SERVICE_UNKNOWN);
    assert_eq!(h.take_listed_dirs(), std::slice::from_ref(&dir));
    // A message that may not auto-start looks nothing up.
    let no_start =
        method_call(Some(NOBODY), "/", Some("com.example.I"), "M").flags(flag::NO_AUTO_START);
    let serial = h.send(c, no_start, &empty());
    h.reply(c, serial).expect_error(err::NAME_HAS_NO_OWNER);
    // A known name is found in the table (its file is only stat'ed).
    h.call(c, SVC, "/", "com.example.I", "M", &empty());
    assert_eq!(h.spawned(), [SVC]);
    assert!(h.take_listed_dirs().is_empty());
    // A file added later is found by the next miss.
    h.add_service_file("com.example.Late", "/usr/bin/late");
    h.call(c, "com.example.Late", "/", "com.example.I", "M", &empty());
    assert_eq!(h.spawned(), [SVC, "com.example.Late"]);
    assert_eq!(h.take_listed_dirs(), [dir]);
}

#[test]
fn watched_directories_are_not_rescanned_on_a_miss() {
    let mut h = harness(&[]);
    let dir = h.service_dir();
    let c = h.client();
    h.watch_dirs(&[&dir]);
    h.take_listed_dirs();
    for _ in 0..3 {
        let serial = h.call(c, NOBODY, "/", "com.example.I", "M", &empty());
        h.reply(c, serial).expect_error(err::SERVICE_UNKNOWN);
    }
    assert!(
        h.take_listed_dirs().is_empty(),
        "a watched directory was scanned"
    );
    // Hits still work.
    h.call(c, SVC, "/", "com.example.I", "M", &empty());
    assert_eq!(h.spawned(), [SVC]);
    // A new file is the watch's business: until the reload it causes, the table answers.
    h.add_service_file("com.example.Late", "/usr/bin/late");
    let serial = h.call(c, "com.example.Late", "/", "com.example.I", "M", &empty());
    h.reply(c, serial).expect_error(err::SERVICE_UNKNOWN);
    assert!(h.take_listed_dirs().is_empty());
    // The reactor reloads on the inotify event; then the name is there.
    h.driver(c, "ReloadConfig", &empty()).expect_return();
    assert_eq!(h.take_listed_dirs(), [dir]);
    h.call(c, "com.example.Late", "/", "com.example.I", "M", &empty());
    assert_eq!(h.spawned(), [SVC, "com.example.Late"]);
    assert!(h.take_listed_dirs().is_empty());
}

#[test]
fn unwatched_directories_are_still_rescanned_on_a_miss() {
    let mut h = harness(&[]);
    let dir = h.service_dir();
    // A second directory the watch does not cover (it did not exist, or it is the strict
    // transient directory).
    let other = std::path::PathBuf::from("/harness/transient");
    let xml = DEFAULT_CONFIG.replace(
        "</busconfig>",
        &format!(
            "{}<servicedir>{}</servicedir></busconfig>",
            h.servicedir_element(),
            other.display()
        ),
    );
    h.write_config_file(Some(&xml));
    let c = h.client();
    h.driver(c, "ReloadConfig", &empty()).expect_return();
    h.watch_dirs(&[&dir]);
    h.take_listed_dirs();
    let serial = h.call(c, NOBODY, "/", "com.example.I", "M", &empty());
    h.reply(c, serial).expect_error(err::SERVICE_UNKNOWN);
    assert_eq!(h.take_listed_dirs(), std::slice::from_ref(&other));
    // A file appearing there is found by the next miss (then the whole table is rebuilt).
    let name = "com.example.Transient";
    h.write_file(
        &other.join(format!("{name}.service")),
        &format!("[D-BUS Service]\nName={name}\nExec=/usr/bin/transient\n"),
    );
    h.call(c, name, "/", "com.example.I", "M", &empty());
    assert_eq!(h.spawned(), [name]);
    assert_eq!(
        h.take_listed_dirs(),
        [other.clone(), dir.clone(), other.clone()]
    );
    // Without a watch every miss rescans everything, once.
    h.watch_dirs(&[]);
    let serial = h.call(c, NOBODY, "/", "com.example.I", "M", &empty());
    h.reply(c, serial).expect_error(err::SERVICE_UNKNOWN);
    assert_eq!(h.take_listed_dirs(), [dir, other]);
}

/// A system bus (`<servicehelper>`) starts services as dbus-daemon does: it runs the helper
/// with the bus name (the helper reads the service file and switches to its `User`), refuses
/// a service file without `User` at once, and reads a non-zero exit status as the helper's
/// code.
#[test]
fn a_system_bus_starts_services_through_its_launch_helper() {
    const HELPER: &str = "/usr/lib/dbus-1.0/dbus-daemon-launch-helper";
    let files = [
        (
            SVC,
            format!("Name={SVC}\nExec=/usr/bin/example-svc\nUser=nobody\n"),
        ),
        (
            "com.example.NoUser",
            "Name=com.example.NoUser\nExec=/usr/bin/example-svc\n".to_string(),
        ),
    ];
    let mut h =
        Harness::with_service_files(&files, &format!("<servicehelper>{HELPER}</servicehelper>"));
    let caller = h.client();
    let s1 = h.call(caller, SVC, "/", "com.example.I", "M", &empty());
    let spawn = h.spawned()[0].clone();
    assert_eq!(spawn.argv, [HELPER, SVC]);
    h.service_started(SVC, 501);
    // The helper's code 6: no such service file in the system service directories.
    h.service_exited(501, Some(6), None);
    let e = h
        .recv(caller)
        .unwrap()
        .expect_error("org.freedesktop.DBus.Error.Spawn.ServiceNotFound");
    assert_eq!(e.reply_serial, Some(s1));
    assert_eq!(
        e.arg_str(0),
        "Bus name not found in system service directory"
    );
    // Codes dbus-daemon does not know (here 1, the helper's generic failure) are ChildExited.
    h.call(caller, SVC, "/", "com.example.I", "M", &empty());
    h.service_started(SVC, 502);
    h.service_exited(502, Some(1), None);
    let e = h
        .recv(caller)
        .unwrap()
        .expect_error("org.freedesktop.DBus.Error.Spawn.ChildExited");
    assert_eq!(
        e.arg_str(0),
        "Launch helper exited with unknown return code 1"
    );
    // No User: refused before anything runs.
    h.call(
        caller,
        "com.example.NoUser",
        "/",
        "com.example.I",
        "M",
        &empty(),
    );
    let e = h
        .recv(caller)
        .unwrap()
        .expect_error("org.freedesktop.DBus.Error.Spawn.FileInvalid");
    assert_eq!(
        e.arg_str(0),
        "Cannot do system-bus activation with no user\n"
    );
    assert_eq!(h.spawned().len(), 2, "a start without User was spawned");
}
