//! The bus driver: every method's error paths, Properties, Introspect, Peer, and the
//! privileged methods refused to an unprivileged uid.

use super::harness::*;

const MONITORING: &str = "org.freedesktop.DBus.Monitoring";
const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
const PEER: &str = "org.freedesktop.DBus.Peer";
const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[test]
fn hello_reply_then_name_acquired_with_distinct_names() {
    let mut h = Harness::new();
    let a = h.connect();
    let serial = h.call(a, DBUS, DBUS_PATH, DBUS_IFACE, "Hello", &empty());
    let got = h.recv_all(a);
    let kinds: Vec<String> = got.iter().map(Msg::kind).collect();
    assert_eq!(kinds, ["return", "signal:NameAcquired"]);
    let name = got[0].arg_str(0);
    assert!(name.starts_with(":1."), "{name}");
    assert_eq!(got[0].reply_serial, Some(serial));
    assert_eq!(got[0].sender.as_deref(), Some(DBUS));
    assert_eq!(got[0].destination.as_deref(), Some(name.as_str()));
    assert_eq!(got[1].arg_str(0), name);
    assert_eq!(got[1].destination.as_deref(), Some(name.as_str()));
    assert_eq!(got[1].path.as_deref(), Some(DBUS_PATH));
    assert_eq!(got[1].interface.as_deref(), Some(DBUS_IFACE));
    assert_eq!(
        got[1].flags & flag::NO_REPLY_EXPECTED,
        flag::NO_REPLY_EXPECTED
    );
    let b = h.client();
    let c = h.client();
    assert_ne!(h.unique(b), name);
    assert_ne!(h.unique(b), h.unique(c));
}

#[test]
fn second_hello_fails_and_the_connection_survives() {
    let mut h = Harness::new();
    let a = h.client();
    let e = h.driver(a, "Hello", &empty()).expect_error(err::FAILED);
    assert_eq!(e.arg_str(0), "Already handled an Hello message");
    assert!(!h.is_closed(a));
    let id = h.driver(a, "GetId", &empty()).expect_return().arg_str(0);
    assert!(is_hex32(&id), "{id}");
    assert_eq!(
        h.driver(a, "GetId", &empty()).arg_str(0),
        id,
        "GetId is stable"
    );
}

#[test]
fn request_and_release_name_refuse_invalid_and_reserved_names() {
    let mut h = Harness::new();
    let a = h.client();
    for bad in [
        "no_dots",
        "a..b",
        "1abc.def",
        "",
        "com.example.",
        "not valid",
    ] {
        let e = h
            .driver(a, "RequestName", &su(bad, 0))
            .expect_error(err::INVALID_ARGS);
        assert_eq!(
            e.arg_str(0),
            format!("Requested bus name \"{bad}\" is not valid")
        );
    }
    let e = h
        .driver(a, "RequestName", &su(":1.42", 0))
        .expect_error(err::INVALID_ARGS);
    // dbus-daemon: "Cannot acquire a service starting with ':' such as \":1.42\"".
    assert!(e.arg_str(0).contains(":1.42"), "{e:#?}");
    let e = h
        .driver(a, "RequestName", &su(DBUS, 0))
        .expect_error(err::INVALID_ARGS);
    assert!(e.arg_str(0).contains("reserved"), "{e:#?}");
    let e = h
        .driver(a, "ReleaseName", &s(":1.42"))
        .expect_error(err::INVALID_ARGS);
    assert!(e.arg_str(0).contains(":1.42"), "{e:#?}");
    for bad in [DBUS, "not valid"] {
        h.driver(a, "ReleaseName", &s(bad))
            .expect_error(err::INVALID_ARGS);
    }
    // Nothing was acquired along the way.
    assert!(h.recv(a).is_none());
}

#[test]
fn name_has_owner_and_get_name_owner() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let me = h.unique(a);
    assert!(h.driver(b, "NameHasOwner", &s(DBUS)).arg_bool(0));
    assert!(!h
        .driver(b, "NameHasOwner", &s("com.example.Nope"))
        .arg_bool(0));
    assert!(h.driver(b, "NameHasOwner", &s(&me)).arg_bool(0));
    assert_eq!(
        h.driver(a, "RequestName", &su("com.example.Owned", 0))
            .arg_u32(0),
        1
    );
    assert_eq!(
        h.driver(b, "GetNameOwner", &s("com.example.Owned"))
            .arg_str(0),
        me
    );
    assert_eq!(h.driver(b, "GetNameOwner", &s(&me)).arg_str(0), me);
    assert_eq!(h.driver(b, "GetNameOwner", &s(DBUS)).arg_str(0), DBUS);
    let e = h
        .driver(b, "GetNameOwner", &s("com.example.Nope"))
        .expect_error(err::NAME_HAS_NO_OWNER);
    assert_eq!(
        e.arg_str(0),
        "Could not get owner of name 'com.example.Nope': no such name"
    );
    h.driver(b, "GetNameOwner", &s(":1.9999"))
        .expect_error(err::NAME_HAS_NO_OWNER);
}

#[test]
fn list_names_starts_with_the_driver() {
    let mut h = Harness::new();
    let a = h.client();
    assert_eq!(
        h.driver(a, "RequestName", &su("com.example.Listed", 0))
            .arg_u32(0),
        1
    );
    let names = h.driver(a, "ListNames", &empty()).arg_strs(0);
    assert_eq!(names.first().map(String::as_str), Some(DBUS), "{names:?}");
    assert!(names.contains(&h.unique(a)));
    assert!(names.iter().any(|n| n == "com.example.Listed"));
    assert_eq!(names.len(), 3, "{names:?}");
    let act = h.driver(a, "ListActivatableNames", &empty()).arg_strs(0);
    assert_eq!(act, vec![DBUS.to_string()], "no service directories");
}

#[test]
fn connection_credentials_and_unknown_connections() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let an = h.unique(a);
    assert_eq!(
        h.driver(b, "GetConnectionUnixUser", &s(&an)).arg_u32(0),
        USER_UID
    );
    assert_eq!(
        h.driver(b, "GetConnectionUnixUser", &s(DBUS)).arg_u32(0),
        DAEMON_UID
    );
    let pid = h
        .driver(b, "GetConnectionUnixProcessID", &s(&an))
        .arg_u32(0);
    assert_ne!(pid, 0);
    for m in [
        "GetConnectionUnixUser",
        "GetConnectionUnixProcessID",
        "GetConnectionCredentials",
        "GetAdtAuditSessionData",
        "GetConnectionSELinuxSecurityContext",
    ] {
        let e = h
            .driver(b, m, &s(":1.999999"))
            .expect_error(err::NAME_HAS_NO_OWNER);
        // dbus-daemon says what it could not get: "Could not get UID of name ...".
        assert!(
            e.arg_str(0).contains("':1.999999': no such name"),
            "{m}: {e:#?}"
        );
    }
    let creds = h.driver(b, "GetConnectionCredentials", &s(&an)).arg_dict(0);
    assert!(
        creds.contains(&("UnixUserID".to_string(), Value::U32(USER_UID))),
        "{creds:?}"
    );
    assert!(
        creds.contains(&("ProcessID".to_string(), Value::U32(pid))),
        "{creds:?}"
    );
    assert!(!creds.iter().any(|(k, _)| k.starts_with(C1)), "{creds:?}");
    h.driver(b, "GetConnectionSELinuxSecurityContext", &s(&an))
        .expect_error("org.freedesktop.DBus.Error.SELinuxSecurityContextUnknown");
}

#[test]
fn add_match_invalid_rules_and_remove_match_not_found() {
    let mut h = Harness::new();
    let a = h.client();
    for bad in [
        "type='nope'",
        "member",
        "member='unterminated",
        "arg64='x'",
        "sender=':1.1',sender=':1.2'",
        "path='not/absolute'",
        "eavesdrop='maybe'",
        "bogus='x'",
    ] {
        h.driver(a, "AddMatch", &s(bad))
            .expect_error(err::MATCH_RULE_INVALID);
    }
    // Too long: LimitsExceeded, not MatchRuleInvalid.
    let long = format!("arg0='{}'", "x".repeat(1100));
    h.driver(a, "AddMatch", &s(&long))
        .expect_error(err::LIMITS_EXCEEDED);
    let e = h
        .driver(a, "RemoveMatch", &s("member='Never'"))
        .expect_error(err::MATCH_RULE_NOT_FOUND);
    assert_eq!(
        e.arg_str(0),
        "The given match rule wasn't found and can't be removed"
    );
    h.driver(a, "RemoveMatch", &s("type='nope'"))
        .expect_error(err::MATCH_RULE_INVALID);
    // Added then removed (in another spelling of the same rule): then gone.
    h.driver(a, "AddMatch", &s("member='X',type='signal'"))
        .expect_return();
    h.driver(a, "RemoveMatch", &s("type='signal',member='X'"))
        .expect_return();
    h.driver(a, "RemoveMatch", &s("type='signal',member='X'"))
        .expect_error(err::MATCH_RULE_NOT_FOUND);
}

#[test]
fn start_service_by_name_unknown() {
    let mut h = Harness::new();
    let a = h.client();
    let e = h
        .driver(a, "StartServiceByName", &su("com.example.NoService", 0))
        .expect_error(err::SERVICE_UNKNOWN);
    assert_eq!(
        e.arg_str(0),
        "The name com.example.NoService was not provided by any .service files"
    );
    assert!(h.spawned().is_empty());
    // As in dbus-daemon, the .service file is looked up before the owner: a running
    // connection without one is ServiceUnknown too, not ALREADY_RUNNING.
    let me = h.unique(a);
    h.driver(a, "StartServiceByName", &su(&me, 0))
        .expect_error(err::SERVICE_UNKNOWN);
    assert_eq!(
        h.driver(a, "RequestName", &su("com.example.Run", 0))
            .arg_u32(0),
        1
    );
    h.driver(a, "StartServiceByName", &su("com.example.Run", 0))
        .expect_error(err::SERVICE_UNKNOWN);
    assert!(h.spawned().is_empty());
}

#[test]
fn unknown_method_and_unknown_interface() {
    let mut h = Harness::new();
    let a = h.client();
    let e = h
        .driver(a, "NoSuchMethod", &empty())
        .expect_error(err::UNKNOWN_METHOD);
    assert_eq!(
        e.arg_str(0),
        "Method \"NoSuchMethod\" with signature \"\" on interface \"org.freedesktop.DBus\" doesn't exist"
    );
    // Without an interface.
    let serial = h.send(
        a,
        method_call(Some(DBUS), DBUS_PATH, None, "Nope"),
        &empty(),
    );
    let e = h.reply(a, serial).expect_error(err::UNKNOWN_METHOD);
    assert!(e.arg_str(0).contains("\"(null)\""), "{e:#?}");
    // Without an interface, a known member still works.
    let serial = h.send(
        a,
        method_call(Some(DBUS), DBUS_PATH, None, "GetId"),
        &empty(),
    );
    h.reply(a, serial).expect_return();
    let e = h
        .driver_iface(a, "org.example.NoIface", "Foo", &empty())
        .expect_error(err::UNKNOWN_INTERFACE);
    assert_eq!(
        e.arg_str(0),
        "Interface \"org.example.NoIface\" not found at path /org/freedesktop/DBus"
    );
    // Monitoring is only at the canonical path.
    let serial = h.call(a, DBUS, "/", MONITORING, "BecomeMonitor", &empty());
    h.reply(a, serial).expect_error(err::UNKNOWN_INTERFACE);
}

#[test]
fn wrong_signature_is_invalid_args() {
    let mut h = Harness::new();
    let a = h.client();
    let e = h
        .driver(a, "RequestName", &s("com.example.X"))
        .expect_error(err::INVALID_ARGS);
    assert_eq!(
        e.arg_str(0),
        "Call to RequestName has wrong args (s, expected su)"
    );
    let mut b = BodyWriter::new();
    b.u32(1);
    h.driver(a, "GetNameOwner", &b)
        .expect_error(err::INVALID_ARGS);
    h.driver(a, "ListNames", &s("extra"))
        .expect_error(err::INVALID_ARGS);
    h.driver(a, "AddMatch", &empty())
        .expect_error(err::INVALID_ARGS);
    // Nothing happened as a side effect.
    assert!(!h.driver(a, "NameHasOwner", &s("com.example.X")).arg_bool(0));
}

#[test]
fn properties_get_get_all_and_set() {
    let mut h = Harness::new();
    let a = h.client();
    let mut b = BodyWriter::new();
    b.str(DBUS_IFACE).str("Features");
    let r = h.driver_iface(a, PROPS, "Get", &b).expect_return();
    assert_eq!(r.signature, "v");
    assert_eq!(
        r.args(),
        vec![Value::Variant(Box::new(Value::Array(
            "s".into(),
            vec![
                Value::Str("ActivatableServicesChanged".into()),
                Value::Str("HeaderFiltering".into())
            ]
        )))]
    );
    let mut b = BodyWriter::new();
    b.str(DBUS_IFACE).str("Interfaces");
    let r = h.driver_iface(a, PROPS, "Get", &b);
    let Value::Variant(v) = &r.args()[0] else {
        panic!("{r:#?}")
    };
    assert_eq!(
        **v,
        Value::Array(
            "s".into(),
            [MONITORING, STATS, C1]
                .iter()
                .map(|s| Value::Str(s.to_string()))
                .collect()
        )
    );
    let all = h
        .driver_iface(a, PROPS, "GetAll", &s(DBUS_IFACE))
        .arg_dict(0);
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["Features", "Interfaces"]);
    assert!(h
        .driver_iface(a, PROPS, "GetAll", &s(PEER))
        .arg_dict(0)
        .is_empty());
    h.driver_iface(a, PROPS, "GetAll", &s("com.example.Nope"))
        .expect_error(err::UNKNOWN_INTERFACE);
    let mut b = BodyWriter::new();
    b.str(DBUS_IFACE).str("Nope");
    let e = h
        .driver_iface(a, PROPS, "Get", &b)
        .expect_error(err::UNKNOWN_PROPERTY);
    assert_eq!(
        e.arg_str(0),
        "Property \"Nope\" not found on interface \"org.freedesktop.DBus\""
    );
    let set = |prop: &str| {
        let mut b = BodyWriter::new();
        b.str(DBUS_IFACE).str(prop).variant("as", |v| {
            v.str_array(["x"]);
        });
        b
    };
    let e = h
        .driver_iface(a, PROPS, "Set", &set("Features"))
        .expect_error(err::PROPERTY_READ_ONLY);
    assert_eq!(
        e.arg_str(0),
        "Property 'Features' on interface 'org.freedesktop.DBus' is read-only"
    );
    h.driver_iface(a, PROPS, "Set", &set("Nope"))
        .expect_error(err::UNKNOWN_PROPERTY);
    // Properties live only at the canonical path.
    let serial = h.call(a, DBUS, "/", PROPS, "GetAll", &s(DBUS_IFACE));
    h.reply(a, serial).expect_error(err::UNKNOWN_INTERFACE);
}

#[test]
fn introspect_canonical_path_and_parents() {
    let mut h = Harness::new();
    let a = h.client();
    let xml = h
        .driver_iface(a, INTROSPECTABLE, "Introspect", &empty())
        .arg_str(0);
    for needle in [
        "<interface name=\"org.freedesktop.DBus\">",
        "<method name=\"RequestName\">",
        "<signal name=\"NameOwnerChanged\">",
        "<interface name=\"org.freedesktop.DBus.Properties\">",
        "<interface name=\"org.freedesktop.DBus.Containers1\">",
        "<signal name=\"InstanceRemoved\"><arg type=\"o\" name=\"path\"/>",
    ] {
        assert!(xml.contains(needle), "{needle} missing");
    }
    assert!(xml.ends_with("</node>\n"));
    let serial = h.call(a, DBUS, "/", INTROSPECTABLE, "Introspect", &empty());
    let root = h.reply(a, serial).expect_return().arg_str(0);
    assert!(
        root.contains("<node name=\"org/freedesktop/DBus\"/>"),
        "{root}"
    );
    assert!(root.contains("<interface name=\"org.freedesktop.DBus\">"));
    assert!(
        !root.contains("org.freedesktop.DBus.Properties"),
        "canonical-only interface at /"
    );
}

#[test]
fn peer_ping_and_machine_id() {
    let mut h = Harness::new();
    let a = h.client();
    let r = h.driver_iface(a, PEER, "Ping", &empty()).expect_return();
    assert_eq!(r.signature, "");
    let id = h.driver_iface(a, PEER, "GetMachineId", &empty()).arg_str(0);
    assert!(is_hex32(&id), "{id}");
    // Destination-less Peer calls are answered by the bus itself, without SENDER, when they
    // name the Peer interface; everything else is UnknownMethod, in dbus-daemon's words.
    let serial = h.send(a, method_call(None, "/", Some(PEER), "Ping"), &empty());
    let r = h.recv(a).unwrap().expect_return();
    assert_eq!(r.reply_serial, Some(serial));
    assert_eq!(r.sender, None);
    assert_eq!(r.destination, None);
    let serial = h.send(
        a,
        method_call(None, "/", Some(PEER), "GetMachineId"),
        &empty(),
    );
    let r = h.recv(a).unwrap().expect_return();
    assert_eq!((r.reply_serial, r.arg_str(0)), (Some(serial), id));
    for (iface, member, text) in [
        (
            Some("com.example.I"),
            "Nope",
            "Method \"Nope\" with signature \"\" on interface \"com.example.I\" doesn't exist\n",
        ),
        (
            None,
            "GetMachineId",
            "Method \"GetMachineId\" with signature \"\" on interface \"(null)\" doesn't exist\n",
        ),
        (
            Some(PEER),
            "Nope",
            "Unknown method invoked on org.freedesktop.DBus.Peer interface",
        ),
    ] {
        let serial = h.send(a, method_call(None, "/", iface, member), &empty());
        let e = h.recv(a).unwrap().expect_error(err::UNKNOWN_METHOD);
        assert_eq!(e.reply_serial, Some(serial));
        assert_eq!(e.arg_str(0), text);
    }
    // With NO_REPLY_EXPECTED: silence.
    h.send(
        a,
        method_call(None, "/", Some(PEER), "Ping").flags(flag::NO_REPLY_EXPECTED),
        &empty(),
    );
    assert!(h.recv(a).is_none());
}

#[test]
fn update_activation_environment_is_privileged() {
    let mut h = Harness::new();
    let a = h.client();
    let an = h.unique(a);
    let env = || {
        let mut b = BodyWriter::new();
        b.array("{ss}", |a| {
            a.dict_entry(|e| {
                e.str("FOO").str("bar");
            });
        });
        b
    };
    let e = h
        .driver(a, "UpdateActivationEnvironment", &env())
        .expect_error(err::ACCESS_DENIED);
    // dbus-daemon's words, naming the caller's process (`HarnessProcesses`).
    let pid = h.pid(a);
    assert_eq!(
        e.arg_str(0),
        format!(
            "rejected attempt to call UpdateActivationEnvironment by connection {an} (uid={USER_UID} pid={pid} comm=\"client --pid {pid}\") with uid {USER_UID}"
        )
    );
    let root = h.client_as(0);
    h.driver(root, "UpdateActivationEnvironment", &env())
        .expect_return();
    let me = h.client_as(DAEMON_UID);
    h.driver(me, "UpdateActivationEnvironment", &env())
        .expect_return();
    // Canonical path only, even for the privileged.
    let serial = h.call(
        me,
        DBUS,
        "/",
        DBUS_IFACE,
        "UpdateActivationEnvironment",
        &env(),
    );
    let e = h.reply(me, serial).expect_error(err::ACCESS_DENIED);
    assert!(
        e.arg_str(0)
            .contains("only available at the canonical object path"),
        "{e:#?}"
    );
}

#[test]
fn become_monitor_is_privileged_and_a_monitor_may_not_send() {
    let mut h = Harness::new();
    let a = h.client();
    let body = || {
        let mut b = BodyWriter::new();
        b.str_array(["type='signal'"]).u32(0);
        b
    };
    h.driver_iface(a, MONITORING, "BecomeMonitor", &body())
        .expect_error(err::ACCESS_DENIED);
    assert!(!h.is_monitor(a));
    let m = h.client_as(DAEMON_UID);
    let mut bad = BodyWriter::new();
    bad.str_array(["type='signal'"]).u32(1);
    h.driver_iface(m, MONITORING, "BecomeMonitor", &bad)
        .expect_error(err::INVALID_ARGS);
    let mut bad = BodyWriter::new();
    bad.str_array(["type='nope'"]).u32(0);
    h.driver_iface(m, MONITORING, "BecomeMonitor", &bad)
        .expect_error(err::MATCH_RULE_INVALID);
    assert!(!h.is_monitor(m));
    let mn = h.unique(m);
    let serial = h.call(m, DBUS, DBUS_PATH, MONITORING, "BecomeMonitor", &body());
    // The reply comes first, then the monitor loses its unique name.
    let got = h.recv_all(m);
    assert_eq!(got[0].reply_serial, Some(serial));
    got[0].clone().expect_return();
    assert!(
        got[1].is_driver_signal("NameLost") && got[1].arg_str(0) == mn,
        "{got:#?}"
    );
    assert!(h.is_monitor(m));
    assert!(!h.driver(a, "NameHasOwner", &s(&mn)).arg_bool(0));
    // It sees broadcasts matching its rules.
    h.send(a, signal(None, "/p", "com.example.I", "Sig"), &empty());
    let seen = h.recv_all(m);
    assert!(
        seen.iter().any(|x| x.member.as_deref() == Some("Sig")),
        "{seen:#?}"
    );
    // Sending anything closes it.
    h.send(m, signal(None, "/p", "com.example.I", "Sig"), &empty());
    assert!(h.is_closed(m));
    assert_eq!(
        h.close_reason(m),
        Some("monitor connections may not send messages")
    );
}

#[test]
fn stats_interface_answers_and_counts() {
    let mut h = Harness::new();
    let a = h.client();
    let stats = h.driver_iface(a, STATS, "GetStats", &empty()).arg_dict(0);
    assert_eq!(stats[0], ("Serial".to_string(), Value::U32(0)));
    assert!(
        stats.contains(&("ActiveConnections".to_string(), Value::U32(1))),
        "{stats:?}"
    );
    let stats = h.driver_iface(a, STATS, "GetStats", &empty()).arg_dict(0);
    assert_eq!(stats[0], ("Serial".to_string(), Value::U32(1)));
    let me = h.unique(a);
    let c = h
        .driver_iface(a, STATS, "GetConnectionStats", &s(&me))
        .arg_dict(0);
    assert_eq!(c[0], ("UniqueName".to_string(), Value::Str(me)));
    h.driver_iface(a, STATS, "GetConnectionStats", &s(DBUS))
        .expect_error(err::INVALID_ARGS);
    h.driver_iface(a, STATS, "GetConnectionStats", &s(":1.999"))
        .expect_error(err::NAME_HAS_NO_OWNER);
}

#[test]
fn audit_data_and_all_match_rules() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let an = h.unique(a);
    h.driver(b, "GetAdtAuditSessionData", &s(&an))
        .expect_error("org.freedesktop.DBus.Error.AdtAuditDataUnknown");
    h.driver(a, "AddMatch", &s("member='M',type='signal'"))
        .expect_return();
    let r = h
        .driver_iface(b, STATS, "GetAllMatchRules", &empty())
        .expect_return();
    assert_eq!(r.signature, "a{sas}");
    let Value::Dict(_, _, entries) = &r.args()[0] else {
        panic!("{r:#?}")
    };
    let mine: Vec<&Value> = entries
        .iter()
        .filter(|(k, _)| *k == Value::Str(an.clone()))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(mine.len(), 1);
    let Value::Array(_, rules) = mine[0] else {
        panic!("{mine:?}")
    };
    assert_eq!(rules.len(), 1);
    let Value::Str(rule) = &rules[0] else {
        panic!("{rules:?}")
    };
    assert!(
        rule.contains("member='M'") && rule.contains("type='signal'"),
        "{rule}"
    );
}

#[test]
fn monitor_sees_traffic_in_order_and_filtered_by_its_rules() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let (an, bn) = (h.unique(a), h.unique(b));
    let become_monitor = |h: &mut Harness, rules: &[&str]| {
        let m = h.client_as(DAEMON_UID);
        let mut body = BodyWriter::new();
        body.str_array(rules.iter().copied()).u32(0);
        h.driver_iface(m, MONITORING, "BecomeMonitor", &body)
            .expect_return();
        h.recv_all(m);
        m
    };
    let all = become_monitor(&mut h, &[]);
    let calls = become_monitor(&mut h, &["type='method_call'"]);
    // `all` saw the second monitor register and become one.
    let setup: Vec<String> = h.recv_all(all).iter().map(Msg::kind).collect();
    assert_eq!(
        setup,
        [
            "call:Hello",
            "return",
            "signal:NameOwnerChanged",
            "signal:NameAcquired",
            "call:BecomeMonitor",
            "return",
            "signal:NameLost",
            "signal:NameOwnerChanged"
        ]
    );
    let serial = h.call(a, &bn, "/", "com.example.I", "M", &s("x"));
    let call = h.recv(b).unwrap();
    h.send(b, reply_to(&call), &empty());
    h.recv(a).unwrap().expect_return();
    h.call(a, "com.example.Nobody", "/", "com.example.I", "N", &empty());
    h.recv(a).unwrap().expect_error(err::SERVICE_UNKNOWN);
    let seen: Vec<(String, Option<String>, Option<String>)> = h
        .recv_all(all)
        .iter()
        .map(|m| (m.kind(), m.sender.clone(), m.destination.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("call:M".to_string(), Some(an.clone()), Some(bn.clone())),
            ("return".to_string(), Some(bn.clone()), Some(an.clone())),
            (
                "call:N".to_string(),
                Some(an.clone()),
                Some("com.example.Nobody".into())
            ),
            (
                format!("error:{}", err::SERVICE_UNKNOWN),
                Some(DBUS.into()),
                Some(an.clone())
            ),
        ]
    );
    let seen: Vec<String> = h.recv_all(calls).iter().map(Msg::kind).collect();
    assert_eq!(seen, ["call:M", "call:N"]);
    // The monitor's copy does not take the addressee's: b got exactly one call.
    assert_eq!(call.serial, serial);
    assert!(h.recv(b).is_none());
}

#[test]
fn monitors_see_hello_from_the_name_it_assigns() {
    // dbus-daemon shows a Hello with the unique name it assigns as SENDER; calls refused
    // before registration keep `:not.active.yet` and come before their error.
    let mut h = Harness::with_limits(&[("max_completed_connections", 3)]);
    let m = h.client_as(DAEMON_UID);
    let mut body = BodyWriter::new();
    body.str_array(Vec::<&str>::new()).u32(0);
    h.driver_iface(m, MONITORING, "BecomeMonitor", &body)
        .expect_return();
    h.recv_all(m);
    let seen = |h: &mut Harness| -> Vec<(String, Option<String>)> {
        h.recv_all(m)
            .iter()
            .map(|x| (x.kind(), x.sender.clone()))
            .collect()
    };
    let a = h.connect();
    let name = h.hello(a);
    assert_eq!(
        seen(&mut h)[..2],
        [
            ("call:Hello".to_string(), Some(name.clone())),
            ("return".to_string(), Some(DBUS.to_string())),
        ]
    );
    // Not registered: another driver method is refused.
    let b = h.connect();
    h.driver(b, "GetId", &empty())
        .expect_error(err::ACCESS_DENIED);
    assert_eq!(
        seen(&mut h),
        [
            (
                "call:GetId".to_string(),
                Some(":not.active.yet".to_string())
            ),
            (
                format!("error:{}", err::ACCESS_DENIED),
                Some(DBUS.to_string())
            ),
        ]
    );
    // A Hello over the connection limit (the monitor and a hold 2 of 3 slots).
    let _c = h.client();
    seen(&mut h);
    h.driver(b, "Hello", &empty())
        .expect_error(err::LIMITS_EXCEEDED);
    assert_eq!(
        seen(&mut h),
        [
            (
                "call:Hello".to_string(),
                Some(":not.active.yet".to_string())
            ),
            (
                format!("error:{}", err::LIMITS_EXCEEDED),
                Some(DBUS.to_string())
            ),
        ]
    );
}
