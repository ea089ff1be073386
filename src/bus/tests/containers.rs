//! Containers1: AddServer (both signatures), the identity of contained connections,
//! what contained connections may not do, StopListening / StopInstance / StopOnDisconnect,
//! the InstanceRemoved signal, and header field 10 after RequestHeader.

use super::harness::*;
use crate::bus::world::{SocketName, SocketProblem};

const PREFIX: &str = "/org/freedesktop/DBus/Containers1/c";
const INSTANCE_KEY: &str = "org.freedesktop.DBus.Containers1.Instance";

/// A manager (uid `USER_UID`), an instance of it, and a registered contained client.
fn contained(h: &mut Harness) -> (Client, Instance, Client) {
    let mgr = h.client();
    let inst = h.add_server(mgr, "com.example.NotFlatpak", "sample-app");
    let cc = h
        .accept_on_instance(&inst.path, USER_UID)
        .expect("accepted on the instance socket");
    assert!(!h.is_closed(cc));
    h.hello(cc);
    (mgr, inst, cc)
}

fn path_body(p: &str) -> BodyWriter {
    let mut b = BodyWriter::new();
    b.object_path(p);
    b
}

fn info(h: &mut Harness, c: Client, path: &str) -> Msg {
    h.driver_iface(c, C1, "GetInstanceInfo", &path_body(path))
}

fn subscribe_removed(h: &mut Harness) -> Client {
    let obs = h.client();
    h.driver(
        obs,
        "AddMatch",
        &s("type='signal',member='InstanceRemoved'"),
    )
    .expect_return();
    obs
}

/// The InstanceRemoved paths a client received.
fn removed(h: &mut Harness, c: Client) -> Vec<String> {
    h.recv_all(c)
        .into_iter()
        .filter(|m| m.is_driver_signal("InstanceRemoved"))
        .map(|m| {
            assert_eq!(m.interface.as_deref(), Some(C1));
            assert_eq!(m.path.as_deref(), Some(DBUS_PATH));
            assert_eq!(m.signature, "o");
            assert_eq!(m.destination, None);
            m.arg_str(0)
        })
        .collect()
}

#[test]
fn add_server_2021_reply_and_socket() {
    let mut h = Harness::new();
    let mgr = h.client();
    let r = h.add_server_with(mgr, "com.example.NotFlatpak", "sample-app", &[]);
    let r = r.expect_return();
    assert_eq!(r.signature, "oays");
    let path = r.arg_str(0);
    assert!(path.starts_with(PREFIX), "{path}");
    let Value::Array(elem, bytes) = &r.args()[1] else {
        panic!("{r:#?}")
    };
    assert_eq!(elem, "y");
    let bytes: Vec<u8> = bytes
        .iter()
        .map(|b| match b {
            Value::Byte(b) => *b,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(bytes.last(), Some(&0), "socket path is NUL-terminated");
    let sock = String::from_utf8(bytes[..bytes.len() - 1].to_vec()).unwrap();
    assert!(sock.starts_with('/'), "{sock}");
    let addr = r.arg_str(2);
    assert!(addr.starts_with("unix:path="), "{addr}");
    assert!(addr.contains(",guid="), "{addr}");
    assert!(h.instance_listening(&path));
    // Paths are never reused.
    let second = h.add_server(mgr, "com.example.NotFlatpak", "other");
    assert_ne!(second.path, path);
    assert!(second.path.starts_with(PREFIX));
}

#[test]
fn add_server_2024_and_connection_info() {
    let mut h = Harness::new();
    let mgr = h.client();
    let inst = h.add_server_2024(mgr, "org.flatpak", "org.gnome.Weather", "inst-1");
    assert!(inst.path.starts_with(PREFIX));
    assert!(inst.address.starts_with("unix:path="), "{}", inst.address);
    let cc = h.accept_on_instance(&inst.path, USER_UID).unwrap();
    let ccn = h.hello(cc);
    let r = h
        .driver_iface(mgr, C1, "GetConnectionInfo", &s(&ccn))
        .expect_return();
    assert_eq!(r.signature, "oa{sv}sssa{sv}");
    assert_eq!(r.arg_str(0), inst.path);
    assert_eq!(
        (r.arg_str(2), r.arg_str(3), r.arg_str(4)),
        (
            "org.flatpak".into(),
            "org.gnome.Weather".into(),
            "inst-1".into()
        )
    );
}

#[test]
fn contained_connection_identity() {
    let mut h = Harness::new();
    let (mgr, inst, cc) = contained(&mut h);
    let ccn = h.unique(cc);
    // It works like any connection.
    assert_eq!(h.driver(cc, "GetNameOwner", &s(DBUS)).arg_str(0), DBUS);
    let r = h
        .driver_iface(mgr, C1, "GetConnectionInstance", &s(&ccn))
        .expect_return();
    assert_eq!(r.signature, "oa{sv}ssa{sv}");
    assert_eq!(r.arg_str(0), inst.path);
    let creator = r.arg_dict(1);
    assert!(
        creator.contains(&("UnixUserID".into(), Value::U32(USER_UID))),
        "{creator:?}"
    );
    assert!(!creator.iter().any(|(k, _)| k == INSTANCE_KEY));
    assert_eq!(r.arg_str(2), "com.example.NotFlatpak");
    assert_eq!(r.arg_str(3), "sample-app");
    assert!(r.arg_dict(4).is_empty());
    // GetInstanceInfo answers the same, without the path.
    let i = info(&mut h, cc, &inst.path).expect_return();
    assert_eq!(i.signature, "a{sv}ssa{sv}");
    assert_eq!(i.args(), r.args()[1..].to_vec());
    // GetConnectionCredentials carries the instance key (an object path), first.
    let cred = h
        .driver(mgr, "GetConnectionCredentials", &s(&ccn))
        .arg_dict(0);
    assert_eq!(
        cred.first(),
        Some(&(
            INSTANCE_KEY.to_string(),
            Value::ObjectPath(inst.path.clone())
        ))
    );
    let mgrn = h.unique(mgr);
    let cred = h
        .driver(cc, "GetConnectionCredentials", &s(&mgrn))
        .arg_dict(0);
    assert!(!cred.iter().any(|(k, _)| k.starts_with(C1)), "{cred:?}");
}

#[test]
fn getters_refuse_what_is_not_contained() {
    let mut h = Harness::new();
    let mgr = h.client();
    let me = h.unique(mgr);
    for (member, arg) in [
        ("GetConnectionInstance", me.as_str()),
        ("GetConnectionInstance", DBUS),
        ("GetConnectionInfo", me.as_str()),
    ] {
        h.driver_iface(mgr, C1, member, &s(arg))
            .expect_error(err::NOT_CONTAINER);
    }
    h.driver_iface(mgr, C1, "GetConnectionInstance", &s("com.example.Nope"))
        .expect_error(err::NAME_HAS_NO_OWNER);
    for member in ["GetInstanceInfo", "StopListening", "StopInstance"] {
        let e = h
            .driver_iface(mgr, C1, member, &path_body("/nope"))
            .expect_error(err::NOT_CONTAINER);
        assert_eq!(e.arg_str(0), "There is no container with path '/nope'");
        h.driver_iface(mgr, C1, member, &path_body(&format!("{PREFIX}0")))
            .expect_error(err::NOT_CONTAINER);
    }
    h.driver_iface(mgr, C1, "GetInstanceInfo", &s("nope"))
        .expect_error(err::INVALID_ARGS);
    // Containers1 lives only at the canonical path.
    let serial = h.call(mgr, DBUS, "/", C1, "GetInstanceInfo", &path_body("/nope"));
    h.reply(mgr, serial).expect_error(err::UNKNOWN_INTERFACE);
    let e = h
        .driver_iface(mgr, C1, "NoSuchMethod", &empty())
        .expect_error(err::UNKNOWN_METHOD);
    assert!(e.arg_str(0).contains("NoSuchMethod"));
}

#[test]
fn contained_connections_may_not_escape() {
    let mut h = Harness::new();
    // Even with the daemon's own uid, a contained connection is not privileged.
    let mgr = h.client_as(DAEMON_UID);
    let inst = h.add_server(mgr, "com.example.NotFlatpak", "x");
    let d = h.accept_on_instance(&inst.path, DAEMON_UID).unwrap();
    let dn = h.hello(d);
    h.add_server_with(d, "a.b", "x", &[])
        .expect_error(err::ACCESS_DENIED);
    let mut b = BodyWriter::new();
    b.str("a.b").str("x").str("y");
    b.array("{sv}", |_| {});
    b.array("{sv}", |_| {});
    let e = h
        .driver_iface(d, C1, "AddServer", &b)
        .expect_error(err::ACCESS_DENIED);
    assert_eq!(
        e.arg_str(0),
        format!("Connection {dn} is in a container and may not call org.freedesktop.DBus.Containers1.AddServer")
    );
    for member in ["StopInstance", "StopListening"] {
        h.driver_iface(d, C1, member, &path_body(&inst.path))
            .expect_error(err::ACCESS_DENIED);
    }
    let mut b = BodyWriter::new();
    b.str_array(Vec::<&str>::new()).u32(0);
    h.driver_iface(d, "org.freedesktop.DBus.Monitoring", "BecomeMonitor", &b)
        .expect_error(err::ACCESS_DENIED);
    h.driver(d, "AddMatch", &s("eavesdrop=true"))
        .expect_error(err::ACCESS_DENIED);
    h.driver_iface(d, "org.freedesktop.DBus.Debug.Stats", "GetStats", &empty())
        .expect_error(err::ACCESS_DENIED);
    let mut env = BodyWriter::new();
    env.array("{ss}", |_| {});
    h.driver(d, "UpdateActivationEnvironment", &env)
        .expect_error(err::ACCESS_DENIED);
    // The manager itself is privileged and still may.
    h.driver(mgr, "AddMatch", &s("eavesdrop=true"))
        .expect_return();
    assert!(
        info(&mut h, d, &inst.path).is_return(),
        "nothing was stopped"
    );
    assert!(h.instance_listening(&inst.path));
}

#[test]
fn only_the_owner_uid_may_connect() {
    let mut h = Harness::new();
    let mgr = h.client();
    let inst = h.add_server(mgr, "com.example.NotFlatpak", "x");
    let intruder = h.accept_on_instance(&inst.path, OTHER_UID).unwrap();
    assert!(
        h.is_closed(intruder),
        "another uid authenticated on a container socket"
    );
    let root = h.accept_on_instance(&inst.path, 0).unwrap();
    assert!(h.is_closed(root));
    let ok = h.accept_on_instance(&inst.path, USER_UID).unwrap();
    assert!(!h.is_closed(ok));
    h.hello(ok);
}

#[test]
fn another_uid_may_not_stop_an_instance() {
    let mut h = Harness::new();
    let mgr = h.client();
    let inst = h.add_server(mgr, "com.example.NotFlatpak", "x");
    let other = h.client_as(OTHER_UID);
    for member in ["StopListening", "StopInstance"] {
        let e = h
            .driver_iface(other, C1, member, &path_body(&inst.path))
            .expect_error(err::ACCESS_DENIED);
        assert_eq!(
            e.arg_str(0),
            format!("User {OTHER_UID} cannot stop a container server started by user {USER_UID}")
        );
    }
    assert!(h.instance_listening(&inst.path));
    // Any connection of the owner's uid may.
    let same = h.client();
    h.driver_iface(same, C1, "StopListening", &path_body(&inst.path))
        .expect_return();
    assert!(!h.instance_listening(&inst.path));
}

#[test]
fn stop_listening_keeps_connections_until_they_leave() {
    let mut h = Harness::new();
    let obs = subscribe_removed(&mut h);
    let (mgr, inst, cc) = contained(&mut h);
    h.driver_iface(mgr, C1, "StopListening", &path_body(&inst.path))
        .expect_return();
    assert!(!h.instance_listening(&inst.path));
    // Twice is fine while the instance lives.
    h.driver_iface(mgr, C1, "StopListening", &path_body(&inst.path))
        .expect_return();
    assert!(removed(&mut h, obs).is_empty());
    assert!(
        h.accept_on_instance(&inst.path, USER_UID).is_none(),
        "accepted after StopListening"
    );
    // The contained connection keeps working; the instance is still known.
    h.driver(cc, "GetId", &empty()).expect_return();
    info(&mut h, mgr, &inst.path).expect_return();
    h.disconnect(cc);
    assert_eq!(removed(&mut h, obs), vec![inst.path.clone()]);
    info(&mut h, mgr, &inst.path).expect_error(err::NOT_CONTAINER);
    h.driver_iface(mgr, C1, "StopListening", &path_body(&inst.path))
        .expect_error(err::NOT_CONTAINER);
    assert!(removed(&mut h, obs).is_empty(), "InstanceRemoved twice");
}

#[test]
fn stop_without_connections_reply_comes_before_instance_removed() {
    let mut h = Harness::new();
    let m = h.client();
    h.driver(m, "AddMatch", &s("type='signal',member='InstanceRemoved'"))
        .expect_return();
    let inst = h.add_server(m, "com.example.NotFlatpak", "x");
    let serial = h.call(
        m,
        DBUS,
        DBUS_PATH,
        C1,
        "StopListening",
        &path_body(&inst.path),
    );
    let got = h.recv_all(m);
    let kinds: Vec<String> = got.iter().map(Msg::kind).collect();
    assert_eq!(kinds, ["return", "signal:InstanceRemoved"]);
    assert_eq!(got[0].reply_serial, Some(serial));
    assert_eq!(got[1].args(), vec![Value::ObjectPath(inst.path.clone())]);
    info(&mut h, m, &inst.path).expect_error(err::NOT_CONTAINER);
    // Connected then disconnected before StopListening: removed at StopListening.
    let inst = h.add_server(m, "com.example.NotFlatpak", "y");
    let c = h.accept_on_instance(&inst.path, USER_UID).unwrap();
    h.hello(c);
    h.disconnect(c);
    assert!(removed(&mut h, m).is_empty());
    h.driver_iface(m, C1, "StopListening", &path_body(&inst.path))
        .expect_return();
    assert_eq!(removed(&mut h, m), vec![inst.path]);
}

#[test]
fn stop_instance_disconnects_contained_connections() {
    let mut h = Harness::new();
    let obs = subscribe_removed(&mut h);
    let (mgr, inst, cc) = contained(&mut h);
    let other = h.accept_on_instance(&inst.path, USER_UID).unwrap();
    h.driver_iface(mgr, C1, "StopInstance", &path_body(&inst.path))
        .expect_return();
    assert!(h.is_closed(cc));
    assert_eq!(h.close_reason(cc), Some("container instance stopped"));
    assert!(
        h.is_closed(other),
        "a connection still authenticating is closed too"
    );
    assert!(!h.is_closed(mgr));
    assert!(!h.instance_listening(&inst.path));
    assert_eq!(removed(&mut h, obs), vec![inst.path.clone()]);
    info(&mut h, mgr, &inst.path).expect_error(err::NOT_CONTAINER);
    h.driver_iface(mgr, C1, "StopInstance", &path_body(&inst.path))
        .expect_error(err::NOT_CONTAINER);
}

#[test]
fn stop_on_disconnect_default_and_disabled() {
    let mut h = Harness::new();
    let obs = subscribe_removed(&mut h);
    // Default: the manager leaving stops listening; connections stay.
    let (mgr, inst, cc) = contained(&mut h);
    h.disconnect(mgr);
    assert!(!h.instance_listening(&inst.path));
    assert!(h.accept_on_instance(&inst.path, USER_UID).is_none());
    h.driver(cc, "GetId", &empty()).expect_return();
    info(&mut h, cc, &inst.path).expect_return();
    assert!(removed(&mut h, obs).is_empty());
    h.disconnect(cc);
    assert_eq!(removed(&mut h, obs), vec![inst.path.clone()]);
    // StopOnDisconnect=false: the instance outlives its manager.
    let mgr = h.client();
    let r = h.add_server_with(
        mgr,
        "com.example.NotFlatpak",
        "keep",
        &[("StopOnDisconnect", false)],
    );
    let path = r.expect_return().arg_str(0);
    h.disconnect(mgr);
    assert!(h.instance_listening(&path));
    let late = h
        .accept_on_instance(&path, USER_UID)
        .expect("still accepting");
    h.hello(late);
    assert!(removed(&mut h, obs).is_empty());
    // A manager that never connected any client, removed at once when it leaves.
    let mgr = h.client();
    let inst = h.add_server(mgr, "com.example.NotFlatpak", "gone");
    h.disconnect(mgr);
    assert_eq!(removed(&mut h, obs), vec![inst.path]);
}

#[test]
fn request_header_stamps_field_10() {
    let mut h = Harness::new();
    let (_mgr, inst, cc) = contained(&mut h);
    let ccn = h.unique(cc);
    let host = h.client();
    let svc = h.client();
    let svcn = h.unique(svc);
    // Before RequestHeader: no field 10.
    h.call(cc, &svcn, "/", "com.example.I", "FromContained", &empty());
    let m = h.recv(svc).unwrap();
    assert_eq!(m.container_instance, None);
    assert!(!m.field_codes.contains(&10));
    // The reply to RequestHeader itself has none either; later messages do.
    let r = h
        .driver_iface(svc, C1, "RequestHeader", &empty())
        .expect_return();
    assert_eq!(r.container_instance, None);
    let serial = h.call(cc, &svcn, "/", "com.example.I", "Hi", &empty());
    let m = h.recv(svc).unwrap();
    assert_eq!((m.serial, m.sender.clone()), (serial, Some(ccn)));
    assert_eq!(m.container_instance.as_deref(), Some(inst.path.as_str()));
    h.call(host, &svcn, "/", "com.example.I", "Hi2", &empty());
    assert_eq!(
        h.recv(svc).unwrap().container_instance.as_deref(),
        Some("/")
    );
    // Bus messages: "/".
    let id = h.driver(svc, "GetId", &empty());
    assert_eq!(id.container_instance.as_deref(), Some("/"));
    // Broadcasts too.
    h.driver(svc, "AddMatch", &s("member='Bc'")).expect_return();
    h.send(cc, signal(None, "/", "com.example.I", "Bc"), &empty());
    assert_eq!(
        h.recv(svc).unwrap().container_instance.as_deref(),
        Some(inst.path.as_str())
    );
    // Receivers that did not ask get no field 10, even from a RequestHeader caller.
    let hostn = h.unique(host);
    h.call(svc, &hostn, "/", "com.example.I", "Hi3", &empty());
    let m = h.recv(host).unwrap();
    assert_eq!(m.container_instance, None);
}

#[test]
fn add_server_argument_checks() {
    let mut h = Harness::with_limits(&[("max_container_metadata_bytes", 100)]);
    let mgr = h.client();
    let e = h
        .add_server_with(mgr, "this is not a valid container type name", "x", &[])
        .expect_error(err::INVALID_ARGS);
    assert!(e
        .arg_str(0)
        .contains("must have the syntax of an interface name"));
    let e = h
        .add_server_with(
            mgr,
            "com.example.T",
            "x",
            &[("ThisArgumentIsntImplemented", false)],
        )
        .expect_error(err::INVALID_ARGS);
    assert_eq!(
        e.arg_str(0),
        "Named parameter ThisArgumentIsntImplemented is not understood"
    );
    let mut b = BodyWriter::new();
    b.str("com.example.T").str("x");
    b.array("{sv}", |_| {});
    b.array("{sv}", |a| {
        a.dict_entry(|e| {
            e.str("StopOnDisconnect").variant("u", |v| {
                v.u32(1);
            });
        });
    });
    let e = h
        .driver_iface(mgr, C1, "AddServer", &b)
        .expect_error(err::INVALID_ARGS);
    assert_eq!(
        e.arg_str(0),
        "Named parameter StopOnDisconnect must have type 'b'"
    );
    let mut b = BodyWriter::new();
    b.str("com.example.T").str("x");
    b.array("{sv}", |a| {
        a.dict_entry(|e| {
            e.str("Blob").variant("s", |v| {
                v.str(&"z".repeat(200));
            });
        });
    });
    b.array("{sv}", |_| {});
    h.driver_iface(mgr, C1, "AddServer", &b)
        .expect_error(err::LIMITS_EXCEEDED);
    // Wrong signature.
    h.driver_iface(mgr, C1, "AddServer", &s("x"))
        .expect_error(err::INVALID_ARGS);
    // Failed calls created nothing, but consumed their numbers: the next path is not c0.
    let inst = h.add_server(mgr, "com.example.T", "ok");
    assert_ne!(inst.path, format!("{PREFIX}0"));
}

#[test]
fn container_limits() {
    let mut h = Harness::with_limits(&[
        ("max_containers_per_user", 1),
        ("max_connections_per_container", 1),
    ]);
    let mgr = h.client();
    let inst = h.add_server(mgr, "com.example.T", "a");
    h.add_server_with(mgr, "com.example.T", "b", &[])
        .expect_error(err::LIMITS_EXCEEDED);
    // Another uid has its own allowance.
    let other = h.client_as(OTHER_UID);
    h.add_server(other, "com.example.T", "c");
    let first = h.accept_on_instance(&inst.path, USER_UID).unwrap();
    assert!(
        h.accept_on_instance(&inst.path, USER_UID).is_none(),
        "over max_connections_per_container"
    );
    h.disconnect(first);
    assert!(h.accept_on_instance(&inst.path, USER_UID).is_some());
    // Stopping frees the per-user slot once the instance is gone.
    h.driver_iface(mgr, C1, "StopInstance", &path_body(&inst.path))
        .expect_return();
    h.add_server(mgr, "com.example.T", "d");
}

#[test]
fn supported_arguments_property() {
    let mut h = Harness::new();
    let a = h.client();
    let mut b = BodyWriter::new();
    b.str(C1).str("SupportedArguments");
    let r = h.driver_iface(a, PROPS, "Get", &b).expect_return();
    assert_eq!(
        r.args(),
        vec![Value::Variant(Box::new(Value::Array(
            "s".into(),
            vec![
                Value::Str("Allow".into()),
                Value::Str("Socket".into()),
                Value::Str("StopOnDisconnect".into()),
                Value::Str("StopOnNotify".into())
            ]
        )))]
    );
    let all = h.driver_iface(a, PROPS, "GetAll", &s(C1)).arg_dict(0);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, "SupportedArguments");
}

#[test]
fn stop_on_notify_fd_hang_up_stops_the_instance() {
    let mut h = Harness::new();
    let obs = subscribe_removed(&mut h);
    let mgr = h.client();
    let (keep, give) = nix::unistd::pipe().unwrap();
    let mut b = BodyWriter::new();
    b.str("com.example.T").str("notify");
    b.array("{sv}", |_| {});
    b.array("{sv}", |a| {
        a.dict_entry(|e| {
            e.str("StopOnNotify").variant("h", |v| {
                v.fd(0);
            });
        });
    });
    // The manager keeps the read end and hands over the write end; the bus keeps its own
    // duplicate, so the manager closing its copy of what it sent changes nothing.
    let serial = h.send_fds(
        mgr,
        MessageBuilder::method_call(DBUS_PATH, Some(C1), "AddServer")
            .flags(0)
            .destination(DBUS),
        &b,
        vec![give],
    );
    let path = h.reply(mgr, serial).expect_return().arg_str(0);
    let cc = h.accept_on_instance(&path, USER_UID).unwrap();
    h.hello(cc);
    h.poll_notify_fds();
    assert!(h.instance_listening(&path));
    assert!(!h.is_closed(cc));
    // The manager's end goes away: the instance stops as StopInstance would.
    drop(keep);
    h.poll_notify_fds();
    assert!(h.is_closed(cc));
    assert!(!h.instance_listening(&path));
    assert_eq!(removed(&mut h, obs), vec![path.clone()]);
    info(&mut h, mgr, &path).expect_error(err::NOT_CONTAINER);
}

#[test]
fn forged_field_10_is_replaced_or_stripped() {
    let mut h = Harness::new();
    let (_mgr, inst, cc) = contained(&mut h);
    let (asker, plain) = (h.client(), h.client());
    let (an, pn) = (h.unique(asker), h.unique(plain));
    h.driver_iface(asker, C1, "RequestHeader", &empty())
        .expect_return();
    // A host connection pretends to be contained: the bus stamps the truth ("/").
    let b = method_call(Some(&an), "/", Some("com.example.I"), "F").build(77, &s("body"));
    h.send_raw(plain, with_header_field(&b, 10, &inst.path));
    let m = h.recv(asker).unwrap();
    assert_eq!(m.container_instance.as_deref(), Some("/"));
    assert_eq!(m.field_codes.iter().filter(|&&c| c == 10).count(), 1);
    assert_eq!(m.arg_str(0), "body", "the body survives the header rebuild");
    // A contained one pretends to be the host: its own path is stamped.
    let b = method_call(Some(&an), "/", Some("com.example.I"), "F").build(78, &empty());
    h.send_raw(cc, with_header_field(&b, 10, "/"));
    assert_eq!(
        h.recv(asker).unwrap().container_instance.as_deref(),
        Some(inst.path.as_str())
    );
    // Receivers that did not ask get no field 10 at all.
    let b = method_call(Some(&pn), "/", Some("com.example.I"), "F").build(79, &s("x"));
    h.send_raw(asker, with_header_field(&b, 10, "/forged"));
    let m = h.recv(plain).unwrap();
    assert_eq!(m.container_instance, None);
    assert!(!m.field_codes.contains(&10), "{:?}", m.field_codes);
    assert_eq!(m.sender, Some(an));
}

/// AddServer with named argument `Socket` = fd 0 (2024 form with `v2024`), sending `fds`;
/// returns the reply.
fn add_server_socket(
    h: &mut Harness,
    c: Client,
    v2024: bool,
    fds: Vec<std::os::fd::OwnedFd>,
) -> Msg {
    let mut b = BodyWriter::new();
    b.str("com.example.Proxy").str("app");
    if v2024 {
        b.str("run-1");
    }
    b.array("{sv}", |_| {});
    b.array("{sv}", |a| {
        a.dict_entry(|e| {
            e.str("Socket").variant("h", |v| {
                v.fd(0);
            });
        });
    });
    let serial = h.send_fds(
        c,
        MessageBuilder::method_call(DBUS_PATH, Some(C1), "AddServer")
            .flags(0)
            .destination(DBUS),
        &b,
        fds,
    );
    h.reply(c, serial)
}

/// Stand-in for a socket: the harness world decides what it "is"
/// ([`Harness::provided_socket_outcome`]); the reactor's checks are tested end to end.
fn some_fd() -> std::os::fd::OwnedFd {
    nix::unistd::pipe().unwrap().0
}

#[test]
fn caller_provided_socket_reaches_the_world_and_the_reply() {
    use std::os::fd::AsRawFd;
    let mut h = Harness::new();
    let mgr = h.client();
    let fd = some_fd();
    let sent = fd.as_raw_fd();
    let r = add_server_socket(&mut h, mgr, false, vec![fd]).expect_return();
    let path = r.arg_str(0);
    // The world got the bus's own duplicate, and its name is the reply's.
    let kept = h
        .provided_socket(&path)
        .expect("the world keeps the provided socket");
    assert_ne!(kept.as_raw_fd(), sent);
    let n = path.strip_prefix(PREFIX).unwrap().to_owned();
    let Value::Array(_, bytes) = &r.args()[1] else {
        panic!("{r:#?}")
    };
    let mut want: Vec<Value> = format!("/harness/provided/sock-{n}")
        .bytes()
        .map(Value::Byte)
        .collect();
    want.push(Value::Byte(0));
    assert_eq!(bytes, &want);
    assert!(
        r.arg_str(2)
            .starts_with(&format!("unix:path=/harness/provided/sock-{n},guid=")),
        "{}",
        r.arg_str(2)
    );
    // Its connections are contained like any other.
    let cc = h.accept_on_instance(&path, USER_UID).unwrap();
    let ccn = h.hello(cc);
    let i = h
        .driver_iface(mgr, C1, "GetConnectionInstance", &s(&ccn))
        .expect_return();
    assert_eq!(i.arg_str(0), path);
    // Stopping drops the bus's copy (the reactor closes it without unlinking).
    h.driver_iface(mgr, C1, "StopListening", &path_body(&path))
        .expect_return();
    assert!(!h.instance_listening(&path));
    assert!(h.provided_socket(&path).is_none());
    assert!(!h.is_closed(cc));
}

#[test]
fn caller_provided_abstract_socket_2021_and_2024() {
    let mut h = Harness::new();
    let mgr = h.client();
    h.provided_socket_outcome(Ok(SocketName::Abstract(b"front/end".to_vec())));
    let r = add_server_socket(&mut h, mgr, true, vec![some_fd()]).expect_return();
    assert_eq!(r.signature, "oa{sv}");
    let address = r.arg_dict(1);
    assert_eq!(address.len(), 1);
    let Value::Str(a) = &address[0].1 else {
        panic!("{address:?}")
    };
    assert!(a.starts_with("unix:abstract=front/end,guid="), "{a}");
    // 2021: no file, so the path is empty (only its NUL); the address names the socket.
    h.provided_socket_outcome(Ok(SocketName::Abstract(b"x".to_vec())));
    let r = add_server_socket(&mut h, mgr, false, vec![some_fd()]).expect_return();
    assert_eq!(r.args()[1], Value::Array("y".into(), vec![Value::Byte(0)]));
    assert!(r.arg_str(2).starts_with("unix:abstract=x,guid="));
    let path = r.arg_str(0);
    let cc = h.accept_on_instance(&path, USER_UID).unwrap();
    h.hello(cc);
    assert!(!h.is_closed(cc));
}

#[test]
fn caller_provided_socket_refusals() {
    let mut h = Harness::new();
    let mgr = h.client();
    for (problem, text) in [
        (SocketProblem::NotUnix, "is not an AF_UNIX socket"),
        (SocketProblem::NotStream, "is not a SOCK_STREAM socket"),
        (SocketProblem::NotListening, "is not listening"),
        (SocketProblem::RelativePath, "is bound to a relative path"),
        (
            SocketProblem::InUse,
            "is already a listening socket of this bus",
        ),
    ] {
        h.provided_socket_outcome(Err(problem));
        let e =
            add_server_socket(&mut h, mgr, false, vec![some_fd()]).expect_error(err::INVALID_ARGS);
        assert!(
            e.arg_str(0).starts_with("Named parameter Socket ") && e.arg_str(0).contains(text),
            "{problem:?}: {}",
            e.arg_str(0)
        );
    }
    // An index past the fds sent: the message is valid (the index is its receiver's
    // business, as in dbus-daemon), and the bus, as that receiver, answers InvalidArgs.
    for fds in [vec![], vec![some_fd()]] {
        let liar = h.client();
        let mut b = BodyWriter::new();
        b.str("com.example.Proxy").str("app");
        b.array("{sv}", |_| {});
        b.array("{sv}", |a| {
            a.dict_entry(|e| {
                e.str("Socket").variant("h", |v| {
                    v.fd(1);
                });
            });
        });
        let serial = h.send_fds(
            liar,
            MessageBuilder::method_call(DBUS_PATH, Some(C1), "AddServer")
                .flags(0)
                .destination(DBUS),
            &b,
            fds,
        );
        let e = h.reply(liar, serial).expect_error(err::INVALID_ARGS);
        assert!(
            e.arg_str(0).contains("which was not sent"),
            "{}",
            e.arg_str(0)
        );
        assert!(!h.is_closed(liar));
        assert!(!h.is_closed(mgr));
    }
    // A path string instead of an fd.
    let mut b = BodyWriter::new();
    b.str("com.example.Proxy").str("app");
    b.array("{sv}", |_| {});
    b.array("{sv}", |a| {
        a.dict_entry(|e| {
            e.str("Socket").variant("s", |v| {
                v.str("/run/user/1000/proxy");
            });
        });
    });
    let e = h
        .driver_iface(mgr, C1, "AddServer", &b)
        .expect_error(err::INVALID_ARGS);
    assert_eq!(e.arg_str(0), "Named parameter Socket must have type 'h'");
    // Nothing was created; the bus carries on.
    let ok = add_server_socket(&mut h, mgr, false, vec![some_fd()]).expect_return();
    assert!(h.instance_listening(&ok.arg_str(0)));
    let all: Vec<_> = (0..20)
        .map(|i| format!("{PREFIX}{i}"))
        .filter(|p| h.instance_listening(p))
        .collect();
    assert_eq!(all, vec![ok.arg_str(0)]);
}

#[test]
fn contained_connections_cannot_provide_sockets() {
    let mut h = Harness::new();
    let (_mgr, _inst, cc) = contained(&mut h);
    add_server_socket(&mut h, cc, false, vec![some_fd()]).expect_error(err::ACCESS_DENIED);
}

#[test]
fn caller_provided_socket_given_up_by_the_reactor() {
    let mut h = Harness::new();
    let obs = subscribe_removed(&mut h);
    let mgr = h.client();
    let path = add_server_socket(&mut h, mgr, false, vec![some_fd()])
        .expect_return()
        .arg_str(0);
    let cc = h.accept_on_instance(&path, USER_UID).unwrap();
    h.hello(cc);
    // As StopListening: the socket goes, the connection stays, the instance with it.
    h.container_socket_failed(&path);
    assert!(!h.instance_listening(&path));
    assert!(h.provided_socket(&path).is_none());
    assert!(!h.is_closed(cc));
    assert!(h.accept_on_instance(&path, USER_UID).is_none());
    assert!(removed(&mut h, obs).is_empty());
    info(&mut h, mgr, &path).expect_return();
    h.disconnect(cc);
    assert_eq!(removed(&mut h, obs), vec![path]);
}
