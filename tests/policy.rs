//! Policy enforcement: the stock Debian system.conf (with its system.d hole
//! punching files) loaded in a private bus, checked with a root client and an
//! unprivileged one (dbus-send run as `nobody` through setpriv), plus a
//! custom session policy with deny send_/own/receive_ rules and the exact
//! error names dbus-daemon answers with.

mod common;

use common::*;
use std::process::Command;

const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
const STOCK_SYSTEM_CONF: &str = "/usr/share/dbus-1/system.conf";
const STOCK_SYSTEM_D: &str = "/usr/share/dbus-1/system.d";
const NOBODY: u32 = 65534;

/// Remove every `<tag>…</tag>` (or `<tag/>`) element from `xml`.
fn drop_element(xml: &str, tag: &str) -> String {
    let mut out = xml.replace(&format!("<{tag}/>"), "");
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    while let Some(a) = out.find(&open) {
        let Some(rel) = out[a..].find(&close) else {
            break;
        };
        out.replace_range(a..a + rel + close.len(), "");
    }
    out
}

/// The stock system.conf made runnable in a scratch directory: no user
/// switch, pid file, syslog or fork; the relative `system.d` include made
/// absolute so the installed service policies still apply. `<listen>` stays
/// (TestBus overrides it with `--address`). None when the file is absent.
fn stock_system_config(test: &str) -> Option<String> {
    let text = match std::fs::read_to_string(STOCK_SYSTEM_CONF) {
        Ok(t) => t,
        Err(e) => {
            skip(test, &format!("cannot read {STOCK_SYSTEM_CONF}: {e}"));
            return None;
        }
    };
    let mut t = text;
    for tag in ["user", "pidfile", "syslog", "fork"] {
        t = drop_element(&t, tag);
    }
    let rel = "<includedir>system.d</includedir>";
    assert!(
        t.contains(rel),
        "stock system.conf changed shape; update the test"
    );
    t = t.replace(rel, &format!("<includedir>{STOCK_SYSTEM_D}</includedir>"));
    assert!(!t.contains("<user>") && !t.contains("<pidfile>"));
    Some(t)
}

/// The stock system bus for `test`, or None (after saying SKIP) without the stock config.
fn system_bus(test: &str) -> Option<TestBus> {
    let conf = stock_system_config(test)?;
    let bus = TestBus::with_config(&conf);
    // The socket must be reachable by an unprivileged client.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(bus.dir(), std::fs::Permissions::from_mode(0o755));
    Some(bus)
}

/// Whether `test` can run clients as `nobody` (root + setpriv); says SKIP and why not.
fn can_run_as_nobody(test: &str) -> bool {
    if !running_as_root() {
        skip(
            test,
            "unprivileged part needs root (to run clients as nobody)",
        );
        return false;
    }
    if !std::path::Path::new("/usr/bin/setpriv").exists() {
        skip(test, "unprivileged part needs /usr/bin/setpriv");
        return false;
    }
    true
}

/// `dbus-send --bus=ADDR ARGS…` run as uid/gid nobody.
fn send_as_nobody(bus: &TestBus, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args(args);
    run_with_timeout(cmd, TIMEOUT)
}

/// dbus-send call of a driver method as nobody.
fn driver_as_nobody(bus: &TestBus, method: &str, args: &[&str]) -> CmdOutput {
    let m = format!("org.freedesktop.DBus.{method}");
    let mut all = vec![
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        DBUS_PATH,
        &m,
    ];
    all.extend_from_slice(args);
    send_as_nobody(bus, &all)
}

#[track_caller]
fn assert_denied(out: &CmdOutput) {
    assert!(!out.success(), "expected AccessDenied, got {out:#?}");
    assert!(
        out.stderr.contains(&format!("Error {ACCESS_DENIED}")),
        "expected AccessDenied: {out:#?}"
    );
}

/// Send a METHOD_RETURN for `call` from `conn`.
fn reply_to(conn: &mut RawConn, call: &RawMsg) {
    let dest = call.sender.clone();
    conn.send(MsgSpec {
        msg_type: msg_type::METHOD_RETURN,
        reply_serial: Some(call.serial),
        destination: dest.as_deref(),
        args: &[s("pong")],
        ..Default::default()
    });
}

/// Method calls `conn` has been sent so far (signals skipped), up to a round-trip sentinel:
/// call it once the bus has handled the calls in question (the caller got its error, or did
/// a [`RawConn::barrier`]).
fn calls_so_far(conn: &mut RawConn) -> Vec<RawMsg> {
    calls_in(conn.sync())
}

fn calls_in(msgs: Vec<RawMsg>) -> Vec<RawMsg> {
    msgs.into_iter()
        .filter(|m| m.msg_type == msg_type::METHOD_CALL)
        .collect()
}

// ---------------------------------------------------------------------------
// Stock system.conf
// ---------------------------------------------------------------------------

#[test]
fn system_conf_allows_driver_basics() {
    let Some(mut bus) = system_bus("system_conf_allows_driver_basics") else {
        return;
    };
    // Root: Hello, GetId, ListNames (raw client and dbus-send).
    bus.assert_alive();
    let mut c = bus.client();
    c.driver("GetNameOwner", &[s(DBUS)]).expect_return();
    if !can_run_as_nobody("system_conf_allows_driver_basics") {
        return;
    }
    // Unprivileged: dbus-send says Hello implicitly.
    let out = driver_as_nobody(&bus, "GetId", &[]);
    let id = out.ok().lines().nth(1).unwrap_or("").trim().to_string();
    assert!(
        id.len() == 41 && id.starts_with("string \""),
        "GetId as nobody: {out:#?}"
    );
    let out = driver_as_nobody(&bus, "ListNames", &[]);
    assert!(out.ok().contains("org.freedesktop.DBus"), "{out:#?}");
    let out = driver_as_nobody(&bus, "GetNameOwner", &["string:org.freedesktop.DBus"]);
    out.ok();
}

#[test]
fn system_conf_denies_owning_arbitrary_names() {
    let Some(bus) = system_bus("system_conf_denies_owning_arbitrary_names") else {
        return;
    };
    // Even root may not own a name no policy file grants.
    let mut root = bus.client();
    root.driver("RequestName", &[s("org.example.Arbitrary"), Arg::U32(0)])
        .expect_error(ACCESS_DENIED);
    // …but may own one a system.d file grants to root.
    assert_eq!(root.request_name("org.freedesktop.hostname1", 0), 1);
    if !can_run_as_nobody("system_conf_denies_owning_arbitrary_names") {
        return;
    }
    for name in ["org.example.Arbitrary", "org.freedesktop.login1"] {
        let out = driver_as_nobody(
            &bus,
            "RequestName",
            &[&format!("string:{name}"), "uint32:0"],
        );
        assert_denied(&out);
    }
    // Nothing was acquired.
    let names = root.driver("ListNames", &[]).expect_return().arg_strs(0);
    assert!(
        !names.iter().any(|n| n == "org.example.Arbitrary"),
        "{names:?}"
    );
}

#[test]
fn system_conf_denies_update_activation_environment() {
    let Some(bus) = system_bus("system_conf_denies_update_activation_environment") else {
        return;
    };
    let mut root = bus.client();
    // Denied by the default policy and not re-allowed for root.
    root.send(MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        path: Some(DBUS_PATH),
        interface: Some(DBUS),
        member: Some("UpdateActivationEnvironment"),
        destination: Some(DBUS),
        signature: Some("a{ss}"),
        // An empty a{ss}: length 0, then padding to 8 for the dict entries.
        args: &[Arg::U32(0), Arg::U32(0)],
        ..Default::default()
    });
    let r = root
        .recv_until(TIMEOUT, |m| {
            m.msg_type == msg_type::ERROR || m.msg_type == msg_type::METHOD_RETURN
        })
        .1
        .expect("no answer to UpdateActivationEnvironment");
    r.expect_error(ACCESS_DENIED);
    if !can_run_as_nobody("system_conf_denies_update_activation_environment") {
        return;
    }
    let out = driver_as_nobody(
        &bus,
        "UpdateActivationEnvironment",
        &["dict:string:string:A,B"],
    );
    assert_denied(&out);
}

#[test]
fn system_conf_policy_applies_to_driver_calls() {
    let Some(bus) = system_bus("system_conf_policy_applies_to_driver_calls") else {
        return;
    };
    // system.conf denies every method call and re-allows only the
    // DBus/Introspectable/Properties/Containers1 interfaces of the driver, so
    // even root is refused Peer.Ping or an interface-less call there: like
    // dbus-daemon, the bus checks the send policy before the driver runs.
    let mut root = bus.client();
    let serial = root.call(
        Some(DBUS),
        DBUS_PATH,
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &[],
    );
    root.wait_reply(serial).expect_error(ACCESS_DENIED);
    let serial = root.call(Some(DBUS), DBUS_PATH, None, "GetId", &[]);
    root.wait_reply(serial).expect_error(ACCESS_DENIED);
    // The allowed interface still works on the same connection.
    root.driver("GetId", &[]).expect_return();
    if !can_run_as_nobody("system_conf_policy_applies_to_driver_calls") {
        return;
    }
    let out = send_as_nobody(
        &bus,
        &[
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            DBUS_PATH,
            "org.freedesktop.DBus.Debug.Stats.GetStats",
        ],
    );
    assert_denied(&out);
    let out = send_as_nobody(
        &bus,
        &[
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            DBUS_PATH,
            "org.freedesktop.DBus.Peer.GetMachineId",
        ],
    );
    assert_denied(&out);
}

#[test]
fn system_conf_restrictive_service_policy() {
    let Some(bus) = system_bus("system_conf_restrictive_service_policy") else {
        return;
    };
    // Root plays logind: login1.conf lets everyone call only a few members.
    let mut service = bus.client();
    assert_eq!(service.request_name("org.freedesktop.login1", 0), 1);
    // Root may call anything on it.
    let mut root = bus.client();
    let serial = root.call(
        Some("org.freedesktop.login1"),
        "/org/freedesktop/login1",
        Some("org.freedesktop.login1.Manager"),
        "NoSuchMethod",
        &[],
    );
    let (_, call) = service.recv_until(TIMEOUT, |m| m.msg_type == msg_type::METHOD_CALL);
    let call = call.expect("root's call was not delivered");
    assert_eq!(call.member.as_deref(), Some("NoSuchMethod"));
    reply_to(&mut service, &call);
    root.wait_reply(serial).expect_return();
    if !can_run_as_nobody("system_conf_restrictive_service_policy") {
        return;
    }
    // Unprivileged: an unknown method (and Properties.Set, which the file does
    // not open) is refused by the bus.
    for member in [
        "org.freedesktop.login1.Manager.NoSuchMethod",
        "org.freedesktop.DBus.Properties.Set",
    ] {
        let out = send_as_nobody(
            &bus,
            &[
                "--print-reply",
                "--dest=org.freedesktop.login1",
                "/org/freedesktop/login1",
                member,
            ],
        );
        assert_denied(&out);
    }
    // Each dbus-send got its AccessDenied from the bus, so the bus is done with both calls.
    assert!(
        calls_so_far(&mut service).is_empty(),
        "a denied call reached the service"
    );
    // An allowed one (Peer.Ping) is delivered and answered.
    let addr_bus = &bus;
    let out = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            send_as_nobody(
                addr_bus,
                &[
                    "--print-reply",
                    "--dest=org.freedesktop.login1",
                    "/org/freedesktop/login1",
                    "org.freedesktop.DBus.Peer.Ping",
                ],
            )
        });
        let (_, call) = service.recv_until(TIMEOUT, |m| m.msg_type == msg_type::METHOD_CALL);
        let call = call.expect("allowed call was not delivered");
        assert_eq!(call.member.as_deref(), Some("Ping"));
        reply_to(&mut service, &call);
        h.join().expect("dbus-send thread")
    });
    assert!(out.ok().contains("pong"), "{out:#?}");
}

#[test]
fn system_conf_allows_signals_from_anyone() {
    let Some(bus) = system_bus("system_conf_allows_signals_from_anyone") else {
        return;
    };
    if !can_run_as_nobody("system_conf_allows_signals_from_anyone") {
        return;
    }
    let mut listener = bus.client();
    listener.add_match("type='signal',interface='org.example.Sys'");
    let out = send_as_nobody(
        &bus,
        &["--type=signal", "/org/example", "org.example.Sys.Ping"],
    );
    out.ok();
    let (_, sig) = listener.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Ping"));
    assert!(sig.is_some(), "signal from nobody not delivered");
}

// ---------------------------------------------------------------------------
// Custom deny rules
// ---------------------------------------------------------------------------

fn custom_bus() -> TestBus {
    TestBus::with_config(&session_config(
        r#"<policy context="default">
             <deny send_interface="org.example.Forbidden"/>
             <deny send_destination="org.example.Svc"
                   send_interface="org.example.Iface" send_member="Secret"/>
             <deny own="org.example.NoOwn"/>
             <deny own_prefix="org.example.NoTree"/>
             <deny receive_interface="org.example.NoReceive"/>
             <deny receive_sender="org.example.Muted"/>
           </policy>"#,
    ))
}

/// Call `member` on `iface` (None = no INTERFACE field) of org.example.Svc.
/// Returns the reply (or error) the caller got and whether the service saw it.
fn call_svc(
    caller: &mut RawConn,
    svc: &mut RawConn,
    iface: Option<&str>,
    member: &str,
) -> (RawMsg, bool) {
    let serial = caller.call(Some("org.example.Svc"), "/org/example", iface, member, &[]);
    // Once the caller's round trip is answered the bus has forwarded or refused the call.
    caller.barrier();
    let calls = calls_so_far(svc);
    for c in &calls {
        reply_to(svc, c);
    }
    (caller.wait_reply(serial), !calls.is_empty())
}

#[test]
fn deny_send_interface_and_member() {
    let bus = custom_bus();
    let mut svc = bus.client();
    assert_eq!(svc.request_name("org.example.Svc", 0), 1);
    let mut c = bus.client();

    let (r, seen) = call_svc(&mut c, &mut svc, Some("org.example.Forbidden"), "Anything");
    r.expect_error(ACCESS_DENIED);
    assert!(!seen);

    let (r, seen) = call_svc(&mut c, &mut svc, Some("org.example.Iface"), "Secret");
    r.expect_error(ACCESS_DENIED);
    assert!(!seen);

    let (r, seen) = call_svc(&mut c, &mut svc, Some("org.example.Iface"), "Public");
    r.expect_return();
    assert!(seen);

    // A deny rule naming an interface also matches messages without one.
    let (r, seen) = call_svc(&mut c, &mut svc, None, "Public");
    r.expect_error(ACCESS_DENIED);
    assert!(!seen);

    // The forbidden interface is refused towards any destination, the driver too.
    let serial = c.call(
        Some(DBUS),
        DBUS_PATH,
        Some("org.example.Forbidden"),
        "GetId",
        &[],
    );
    c.wait_reply(serial).expect_error(ACCESS_DENIED);
    // The bus keeps serving the client.
    c.driver("GetId", &[]).expect_return();
}

#[test]
fn deny_own_and_own_prefix() {
    let bus = custom_bus();
    let mut c = bus.client();
    for name in [
        "org.example.NoOwn",
        "org.example.NoTree",
        "org.example.NoTree.Sub.Deeper",
    ] {
        let r = c.driver("RequestName", &[s(name), Arg::U32(0)]);
        let r = r.expect_error(ACCESS_DENIED);
        assert!(r.arg_str(0).contains(name), "{r:#?}");
    }
    // Prefixes stop at a dot boundary; unrelated names stay ownable.
    assert_eq!(c.request_name("org.example.NoTreeHouse", 0), 1);
    assert_eq!(c.request_name("org.example.NoOwn.Child", 0), 1);
    let names = c.driver("ListNames", &[]).expect_return().arg_strs(0);
    assert!(!names.iter().any(|n| n == "org.example.NoOwn"), "{names:?}");
}

#[test]
fn deny_receive_interface() {
    let bus = custom_bus();
    let mut svc = bus.client();
    assert_eq!(svc.request_name("org.example.Svc", 0), 1);
    let mut c = bus.client();
    let (r, seen) = call_svc(&mut c, &mut svc, Some("org.example.NoReceive"), "Call");
    r.expect_error(ACCESS_DENIED);
    assert!(!seen);
    // Broadcast signals with that interface are dropped for the listener.
    svc.add_match("type='signal'");
    c.signal(None, "/x", "org.example.NoReceive", "Sig", &[]);
    c.signal(None, "/x", "org.example.Fine", "Sig", &[]);
    let (before, fine) = svc.recv_until(TIMEOUT, |m| {
        m.interface.as_deref() == Some("org.example.Fine")
    });
    assert!(fine.is_some());
    assert!(
        !before
            .iter()
            .any(|m| m.interface.as_deref() == Some("org.example.NoReceive")),
        "{before:#?}"
    );
}

#[test]
fn deny_receive_sender() {
    let bus = custom_bus();
    let mut muted = bus.client();
    assert_eq!(muted.request_name("org.example.Muted", 0), 1);
    let mut listener = bus.client();
    listener.add_match("type='signal',interface='org.example.M'");
    // A call from the muted sender is refused at the recipient.
    let serial = muted.call(
        Some(listener.unique()),
        "/x",
        Some("org.example.M"),
        "Call",
        &[],
    );
    muted.wait_reply(serial).expect_error(ACCESS_DENIED);
    // Its broadcast is not delivered; another sender's is. The barrier orders the two
    // senders: the bus has handled FromMuted before other sends FromOther.
    muted.signal(None, "/x", "org.example.M", "FromMuted", &[]);
    muted.barrier();
    let mut other = bus.client();
    other.signal(None, "/x", "org.example.M", "FromOther", &[]);
    let (before, got) = listener.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("FromOther"));
    assert!(got.is_some());
    assert!(
        !before
            .iter()
            .any(|m| m.member.as_deref() == Some("FromMuted")),
        "{before:#?}"
    );
    // Nor did the refused call arrive, before FromOther or since.
    let mut calls = calls_in(before);
    calls.extend(calls_so_far(&mut listener));
    assert!(calls.is_empty(), "{calls:#?}");
    // Once the name is released the same connection is heard again.
    assert_eq!(muted.release_name("org.example.Muted"), 1);
    let serial = muted.call(
        Some(listener.unique()),
        "/x",
        Some("org.example.M"),
        "Call2",
        &[],
    );
    let (_, call) = listener.recv_until(TIMEOUT, |m| m.msg_type == msg_type::METHOD_CALL);
    let call = call.expect("call after ReleaseName not delivered");
    reply_to(&mut listener, &call);
    muted.wait_reply(serial).expect_return();
}

// ---------------------------------------------------------------------------
// Refusals in the log
// ---------------------------------------------------------------------------

/// Assert that the daemon logged `text` (the words of a refusal it answered with).
#[track_caller]
fn assert_logged(bus: &TestBus, text: &str) {
    let log = bus.stderr();
    assert!(log.contains(text), "{text:?} not logged; stderr:\n{log}");
}

/// The text of the D-Bus error dbus-send printed (`Error NAME: TEXT`).
fn dbus_send_error_text(out: &CmdOutput) -> String {
    let line = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error "))
        .unwrap_or_else(|| panic!("no error: {out:#?}"));
    let (_, text) = line.split_once(": ").expect("error name and text");
    text.to_string()
}

#[test]
fn refusals_are_logged_with_dbus_daemons_words() {
    // RUST_LOG is empty: the default level still logs refusals.
    let bus = TestBus::with_config_logging(&session_config(
        r#"<policy context="default">
             <deny send_interface="com.example.Denied"/>
             <deny own="com.example.NotMine"/>
           </policy>
           <limit name="max_names_per_connection">2</limit>
           <limit name="max_match_rules_per_connection">1</limit>
           <limit name="max_completed_connections">3</limit>"#,
    ));
    let mut a = bus.client();
    let b = bus.client();
    let (an, bn) = (a.unique().to_string(), b.unique().to_string());
    let who = loginfo_of_this_process();

    // A send refused by the policy: the error and the log line say who sent what to whom.
    let serial = a.call(Some(&bn), "/p", Some("com.example.Denied"), "Foo", &[]);
    let e = a.wait_reply(serial).expect_error(ACCESS_DENIED);
    let text = format!(
        "Rejected send message, 2 matched rules; type=\"method_call\", sender=\"{an}\" ({who}) interface=\"com.example.Denied\" member=\"Foo\" error name=\"(unset)\" requested_reply=\"0\" destination=\"{bn}\" ({who})"
    );
    assert_eq!(e.arg_str(0), text);
    assert_logged(&bus, &text);

    // A name the policy keeps from us (dbus-daemon answers without logging).
    let e = a
        .driver("RequestName", &[s("com.example.NotMine"), Arg::U32(0)])
        .expect_error(ACCESS_DENIED);
    let text = format!(
        "Connection \"{an}\" is not allowed to own the service \"com.example.NotMine\" due to security policies in the configuration file"
    );
    assert_eq!(e.arg_str(0), text);
    if !is_reference_daemon() {
        assert_logged(&bus, &text);
    }

    // Over the name limit (the unique name counts).
    assert_eq!(a.request_name("com.example.One", 0), 1);
    let e = a
        .driver("RequestName", &[s("com.example.Two"), Arg::U32(0)])
        .expect_error(LIMITS_EXCEEDED);
    let text = format!(
        "Connection \"{an}\" is not allowed to own more services (increase limits in configuration file if required; max_names_per_connection=2)"
    );
    assert_eq!(e.arg_str(0), text);
    assert_logged(&bus, &text);

    // Over the match-rule limit.
    a.add_match("member='A'");
    let e = a
        .driver("AddMatch", &[s("member='B'")])
        .expect_error(LIMITS_EXCEEDED);
    let text = format!(
        "Connection \"{an}\" is not allowed to add more match rules (increase limits in configuration file if required; max_match_rules_per_connection=1)"
    );
    assert_eq!(e.arg_str(0), text);
    assert_logged(&bus, &text);

    // Over the connection limit: the log line names the limit, the error does not.
    let _c = bus.client();
    let mut d = bus.raw();
    d.auth_external();
    let e = d.driver("Hello", &[]).expect_error(LIMITS_EXCEEDED);
    assert_eq!(
        e.arg_str(0),
        "The maximum number of active connections has been reached"
    );
    assert_logged(
        &bus,
        "The maximum number of active connections has been reached (max_completed_connections=3)",
    );
}

#[test]
fn privileged_method_refusals_are_logged() {
    if !can_run_as_nobody("privileged_method_refusals_are_logged") {
        return;
    }
    // Every uid may connect and send to the bus; only the privilege check refuses.
    let bus = TestBus::with_config_logging(&session_config(
        r#"<policy context="default"><allow user="*"/></policy>"#,
    ));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bus.dir(), std::fs::Permissions::from_mode(0o755))
        .expect("open the bus directory");
    for (method, args) in [
        (
            "Monitoring.BecomeMonitor",
            &["array:string:", "uint32:0"][..],
        ),
        (
            "UpdateActivationEnvironment",
            &["dict:string:string:A,B"][..],
        ),
    ] {
        let out = driver_as_nobody(&bus, method, args);
        assert_denied(&out);
        let text = dbus_send_error_text(&out);
        let member = method.rsplit('.').next().unwrap_or(method);
        // "… by connection :1.N (uid=65534 pid=P comm="dbus-send …") with uid 65534"
        assert!(
            text.starts_with(&format!(
                "rejected attempt to call {member} by connection :1."
            )) && text.contains(&format!("(uid={NOBODY} pid="))
                && text.contains(" comm=\"dbus-send --bus=")
                && text.ends_with(&format!(") with uid {NOBODY}")),
            "{text}"
        );
        assert_logged(&bus, &text);
    }
}

#[test]
fn system_conf_refusals_of_bus_methods_are_logged() {
    let test = "system_conf_refusals_of_bus_methods_are_logged";
    let Some(conf) = stock_system_config(test) else {
        return;
    };
    if !can_run_as_nobody(test) {
        return;
    }
    let bus = TestBus::with_config_logging(&conf);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bus.dir(), std::fs::Permissions::from_mode(0o755))
        .expect("open the bus directory");
    // The stock policy refuses both to everyone but root before the privilege check.
    for (method, iface, args) in [
        (
            "Monitoring.BecomeMonitor",
            "org.freedesktop.DBus.Monitoring",
            &["array:string:", "uint32:0"][..],
        ),
        (
            "UpdateActivationEnvironment",
            "org.freedesktop.DBus",
            &["dict:string:string:A,B"][..],
        ),
    ] {
        let out = driver_as_nobody(&bus, method, args);
        assert_denied(&out);
        let text = dbus_send_error_text(&out);
        let member = method.rsplit('.').next().unwrap_or(method);
        assert!(
            text.starts_with("Rejected send message, ")
                && text.contains(" matched rules; type=\"method_call\", sender=\":1.")
                && text.contains(&format!("(uid={NOBODY} pid="))
                && text.ends_with(&format!(
                    "interface=\"{iface}\" member=\"{member}\" error name=\"(unset)\" requested_reply=\"0\" destination=\"org.freedesktop.DBus\" (bus)"
                )),
            "{text}"
        );
        assert_logged(&bus, &text);
    }
}

#[test]
fn more_refusals_are_logged_with_dbus_daemons_words() {
    let bus = TestBus::with_config_logging(&session_config(
        r#"<policy context="default">
             <deny receive_sender="org.freedesktop.DBus" receive_interface="org.freedesktop.DBus"
                   receive_member="NameAcquired"/>
           </policy>
           <limit name="max_connections_per_user">2</limit>"#,
    ));
    let who = loginfo_of_this_process();
    // A message from the bus that the receiver's policy refuses: sender and loginfo unset.
    let a = bus.client();
    assert_logged(
        &bus,
        &format!(
            "Rejected receive message, 2 matched rules; type=\"signal\", sender=\"(unset)\" ((bus)) interface=\"org.freedesktop.DBus\" member=\"NameAcquired\" error name=\"(unset)\" requested_reply=\"0\" destination=\"{}\" ({who})",
            a.unique()
        ),
    );
    // Over the per-user connection limit.
    let _b = bus.client();
    let mut c = bus.raw();
    c.auth_external();
    let e = c.driver("Hello", &[]).expect_error(LIMITS_EXCEEDED);
    // SAFETY: getuid takes no arguments and cannot fail.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        e.arg_str(0),
        format!("The maximum number of active connections for UID {uid} has been reached")
    );
    assert_logged(
        &bus,
        &format!("The maximum number of active connections for UID {uid} has been reached (max_connections_per_user=2)"),
    );
}
