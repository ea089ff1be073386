//! The bus driver side by side with dbus-daemon: the same calls (every driver method with
//! valid, unowned, malformed and oddly typed arguments, match rules good and bad, the
//! standard interfaces) made to sluicebus and to the reference dbus-daemon, each from a fresh
//! connection, and the outcomes compared: method return and its signature (and its values
//! where they do not depend on the bus: booleans, reply codes, names by role), the error
//! name, or the disconnection. Listed deliberate differences aside, any other difference fails
//! and prints the side-by-side table. `DRIVER_DIFFERENTIAL_TABLE=1` prints every row.

mod common;

use common::*;
use std::path::Path;

/// One call: member, interface (None: omitted), path, signature override, arguments.
struct Case {
    iface: Option<&'static str>,
    path: &'static str,
    member: &'static str,
    sig: Option<&'static str>,
    args: Vec<Arg>,
}

fn call(member: &'static str, args: Vec<Arg>) -> Case {
    Case {
        iface: Some(DBUS),
        path: DBUS_PATH,
        member,
        sig: None,
        args,
    }
}

/// A bus with its fixtures: `owner` owns `com.example.Owned` and `queued` waits for it.
struct Side {
    bus: TestBus,
    owner: RawConn,
    _queued: RawConn,
}

impl Side {
    fn start(daemon: &Path) -> Side {
        let bus = TestBus::with_daemon(daemon, &session_config(""));
        let mut owner = bus.client();
        assert_eq!(owner.request_name("com.example.Owned", 0), 1);
        let mut queued = bus.client();
        assert_eq!(queued.request_name("com.example.Owned", 0), 2);
        Side {
            bus,
            owner,
            _queued: queued,
        }
    }

    /// What calling `case` from a fresh connection gives, in bus-independent words.
    fn outcome(&self, case: &Case) -> String {
        let mut c = self.bus.client();
        let me = c.unique().to_string();
        let owner = self.owner.unique().to_string();
        let role = |v: &str| -> String {
            match v {
                _ if v == me => "$me".into(),
                _ if v == owner => "$owner".into(),
                _ if v.starts_with(':') => ":other".into(),
                _ => v.into(),
            }
        };
        // `$owner` in an argument stands for the owner's unique name on this bus.
        let args: Vec<Arg> = case
            .args
            .iter()
            .map(|a| match a {
                Arg::Str(v) if v == "$owner" => Arg::Str(owner.clone()),
                other => other.clone(),
            })
            .collect();
        let serial = c.send(MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            path: Some(case.path),
            interface: case.iface,
            member: Some(case.member),
            destination: Some(DBUS),
            signature: case.sig,
            args: &args,
            ..Default::default()
        });
        let (_, reply) = c.recv_until(TIMEOUT, |m| m.reply_serial == Some(serial));
        let Some(m) = reply else {
            return if c.closed_within(TIMEOUT) {
                "disconnected".into()
            } else {
                "no reply".into()
            };
        };
        if m.msg_type == msg_type::ERROR {
            return format!("error {}", m.error_name.unwrap_or_default());
        }
        // Values that are the same on any bus; the rest is compared by signature only.
        let values: Vec<String> = m
            .args
            .iter()
            .map(|a| match a {
                Arg::Bool(b) => b.to_string(),
                Arg::U32(u) if case.member != "GetConnectionUnixProcessID" => u.to_string(),
                Arg::Str(v) if case.member == "GetNameOwner" => role(v),
                Arg::Array(items) if case.member == "ListQueuedOwners" => {
                    let names: Vec<String> = items
                        .iter()
                        .map(|i| match i {
                            Arg::Str(v) => role(v),
                            other => format!("{other:?}"),
                        })
                        .collect();
                    names.join(",")
                }
                _ => "_".into(),
            })
            .collect();
        format!("return '{}' {}", m.signature, values.join(" "))
    }
}

fn cases() -> Vec<Case> {
    let long255 = format!("a.{}", "b".repeat(253));
    let long256 = format!("a.{}", "b".repeat(254));
    let names: Vec<String> = [
        "com.example.Owned",
        "com.example.Unowned",
        "$owner",
        ":1.9999",
        ":a",
        "",
        "a",
        "a..b",
        ".a.b",
        "a.b.",
        "1a.b",
        "a.1b",
        "a.b-c",
        "a b.c",
        "*",
        DBUS,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long255, long256])
    .collect();
    let mut v = Vec::new();
    for method in [
        "NameHasOwner",
        "GetNameOwner",
        "ListQueuedOwners",
        "GetConnectionUnixUser",
        "GetConnectionUnixProcessID",
        "GetConnectionCredentials",
        "GetAdtAuditSessionData",
        "GetConnectionSELinuxSecurityContext",
        "ReleaseName",
    ] {
        for n in &names {
            v.push(call(method, vec![s(n)]));
        }
        v.push(call(method, vec![]));
        v.push(call(method, vec![Arg::U32(1)]));
        v.push(call(method, vec![s("a.b"), s("c.d")]));
    }
    for n in &names {
        for flags in [0, 1, 2, 4, 7, 8, 0xffff_ffff] {
            v.push(call("RequestName", vec![s(n), Arg::U32(flags)]));
        }
        v.push(call("StartServiceByName", vec![s(n), Arg::U32(0)]));
    }
    v.push(call("RequestName", vec![s("com.example.X")]));
    v.push(call("StartServiceByName", vec![s("com.example.X")]));
    v.push(call(
        "StartServiceByName",
        vec![s("com.example.X"), Arg::U32(1)],
    ));
    for rule in [
        "",
        "type='signal'",
        "type='method_call'",
        "type='foo'",
        "type=signal",
        "sender=':a'",
        "sender='com.example.Owned'",
        "interface='a'",
        "interface='a.b'",
        "member='a-b'",
        "member='a.b'",
        "path='/a/'",
        "path='/a'",
        "path_namespace='/'",
        "path_namespace='/a/'",
        "path='/a',path_namespace='/a'",
        "destination=':1.1'",
        "destination='com.example.Owned'",
        "arg0='x'",
        "arg63='x'",
        "arg64='x'",
        "arg0path='/a/'",
        "arg0path='x'",
        "arg0namespace='a.b'",
        "arg0namespace='a.'",
        "arg1namespace='a.b'",
        "eavesdrop=true",
        "eavesdrop='true'",
        "eavesdrop='yes'",
        "foo='bar'",
        "type='signal',type='signal'",
        "type='signal'',",
        "type='signal",
        "member='it'\\''s'",
        "type='signal',",
        ",type='signal'",
        "type = 'signal'",
        "TYPE='signal'",
    ] {
        v.push(call("AddMatch", vec![s(rule)]));
        v.push(call("RemoveMatch", vec![s(rule)]));
    }
    v.push(call("AddMatch", vec![]));
    v.push(call("AddMatch", vec![Arg::U32(1)]));
    for (member, args) in [
        ("ListNames", vec![]),
        ("ListActivatableNames", vec![]),
        ("GetId", vec![]),
        ("GetId", vec![s("x")]),
        ("Hello", vec![]),
        ("ReloadConfig", vec![]),
        ("NoSuchMethod", vec![]),
        ("BecomeMonitor", vec![]),
        ("BecomeMonitor", vec![s("x")]),
        ("UpdateActivationEnvironment", vec![]),
        ("UpdateActivationEnvironment", vec![s("A=B")]),
    ] {
        v.push(call(member, args));
    }
    let dict_sig = Case {
        sig: Some("a{ss}"),
        // An empty array: its length and the padding to the entries' 8-alignment.
        args: vec![Arg::U32(0), Arg::U32(0)],
        ..call("UpdateActivationEnvironment", vec![])
    };
    v.push(dict_sig);
    let monitor_sig = Case {
        sig: Some("asu"),
        args: vec![Arg::Array(vec![s("type='foo'")]), Arg::U32(0)],
        ..call("BecomeMonitor", vec![])
    };
    v.push(monitor_sig);
    let iface = |iface: Option<&'static str>, path, member, args| Case {
        iface,
        path,
        member,
        sig: None,
        args,
    };
    const PEER: &str = "org.freedesktop.DBus.Peer";
    const PROPS: &str = "org.freedesktop.DBus.Properties";
    const INTRO: &str = "org.freedesktop.DBus.Introspectable";
    const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
    const MONITORING: &str = "org.freedesktop.DBus.Monitoring";
    v.push(iface(Some(STATS), DBUS_PATH, "GetStats", vec![]));
    v.push(iface(
        Some(STATS),
        DBUS_PATH,
        "GetConnectionStats",
        vec![s("$owner")],
    ));
    v.push(iface(
        Some(STATS),
        DBUS_PATH,
        "GetConnectionStats",
        vec![s(":1.9999")],
    ));
    v.push(iface(Some(STATS), DBUS_PATH, "GetAllMatchRules", vec![]));
    v.push(Case {
        iface: Some(MONITORING),
        sig: Some("asu"),
        args: vec![Arg::Array(vec![s("type='signal'")]), Arg::U32(0)],
        ..call("BecomeMonitor", vec![])
    });
    v.push(Case {
        iface: Some(MONITORING),
        sig: Some("asu"),
        args: vec![Arg::Array(vec![]), Arg::U32(1)],
        ..call("BecomeMonitor", vec![])
    });
    for path in [DBUS_PATH, "/", "/x"] {
        v.push(iface(Some(PEER), path, "Ping", vec![]));
        v.push(iface(Some(PEER), path, "GetMachineId", vec![]));
        v.push(iface(Some(INTRO), path, "Introspect", vec![]));
        v.push(iface(Some(DBUS), path, "GetId", vec![]));
        v.push(iface(None, path, "GetId", vec![]));
        v.push(iface(None, path, "Ping", vec![]));
        v.push(iface(Some("com.example.Nope"), path, "GetId", vec![]));
        for (member, args) in [
            ("Get", vec![s(DBUS), s("Features")]),
            ("Get", vec![s(DBUS), s("Interfaces")]),
            ("Get", vec![s(DBUS), s("Bogus")]),
            ("Get", vec![s("com.example.Nope"), s("Features")]),
            ("Get", vec![s(DBUS)]),
            ("GetAll", vec![s(DBUS)]),
            ("GetAll", vec![s("com.example.Nope")]),
            ("GetAll", vec![s("")]),
            ("Get", vec![s(""), s("Features")]),
            ("Get", vec![s(""), s("Bogus")]),
            ("Set", vec![s(""), s("Features")]),
            ("Set", vec![s(DBUS), s("Features")]),
        ] {
            v.push(iface(Some(PROPS), path, member, args));
        }
    }
    v
}

/// Differences kept on purpose, as (member, first string argument or "", sluicebus's outcome,
/// dbus-daemon's outcome), each with its reason.
const DELIBERATE: &[(&str, &str, &str, &str)] = &[
    // `:a` is no bus name by the specification (a unique name has a `.` and no empty
    // element); libdbus takes it. dbus-broker refuses the rule too.
    (
        "AddMatch",
        "sender=':a'",
        "error org.freedesktop.DBus.Error.MatchRuleInvalid",
        "return '' ",
    ),
    (
        "RemoveMatch",
        "sender=':a'",
        "error org.freedesktop.DBus.Error.MatchRuleInvalid",
        "error org.freedesktop.DBus.Error.MatchRuleNotFound",
    ),
    // The specification lets Properties callers give an empty interface name; the driver
    // then reads its own properties. dbus-daemon and dbus-broker answer UnknownInterface.
    (
        "GetAll",
        "",
        "return 'a{sv}' _",
        "error org.freedesktop.DBus.Error.UnknownInterface",
    ),
    (
        "Get",
        "",
        "return 'v' _",
        "error org.freedesktop.DBus.Error.UnknownInterface",
    ),
    (
        "Get",
        "",
        "error org.freedesktop.DBus.Error.UnknownProperty",
        "error org.freedesktop.DBus.Error.UnknownInterface",
    ),
];

#[test]
fn driver_calls_match_dbus_daemon() {
    let ours = Side::start(&daemon_path());
    let theirs = Side::start(&reference_daemon());
    let mut rows = Vec::new();
    let mut same = 0;
    for case in cases() {
        let a = ours.outcome(&case);
        let b = theirs.outcome(&case);
        let first = match case.args.first() {
            Some(Arg::Str(v)) => v.clone(),
            _ => String::new(),
        };
        if std::env::var_os("DRIVER_DIFFERENTIAL_TABLE").is_some() {
            eprintln!("{} {:?}: {a} | {b}", case.member, case.args);
        }
        if a == b {
            same += 1;
        } else if !DELIBERATE
            .iter()
            .any(|&(m, f, x, y)| m == case.member && f == first && x == a && y == b)
        {
            rows.push(format!(
                "| {} {} {} {:?} | {a} | {b} |",
                case.iface.unwrap_or("-"),
                case.path,
                case.member,
                case.args
            ));
        }
    }
    assert!(
        rows.is_empty(),
        "{same} the same, {} different:\n| call | sluicebus | dbus-daemon |\n|---|---|---|\n{}",
        rows.len(),
        rows.join("\n")
    );
}
