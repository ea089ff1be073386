//! Containers1 filtering (`Allow`): what a connection of a filtered instance may see, call,
//! own and hear, including the escape attempts (forged and duplicate replies, fds in calls
//! and replies, ownership oracles, auto-start of hidden names, a unique name that dropped
//! the name its rights came from, a sibling instance, a departed caller).

use super::harness::*;

const SEE: u32 = 0x04;
const CALL: u32 = 0x08;
const BCAST: u32 = 0x10;
const OWN: u32 = 0x20;
const FDS: u32 = 0x40;
const NAME_TREE: u32 = 0x01;
const PATH_TREE: u32 = 0x02;

/// A world with one outside service owning `org.example.Svc`, a manager, and a filtered
/// instance made with `rules` holding one registered contained client.
struct World {
    h: Harness,
    svc: Client,
    mgr: Client,
    cc: Client,
    instance: String,
}

fn own(h: &mut Harness, c: Client, name: &str) {
    let r = h.driver(c, "RequestName", &su(name, 0)).expect_return();
    assert_eq!(r.arg_u32(0), 1, "{name}");
}

fn world(rules: &[(u32, &str, &str, &str)]) -> World {
    let mut h = Harness::new();
    let svc = h.client();
    own(&mut h, svc, "org.example.Svc");
    let mgr = h.client();
    let r = h.add_server_allow(mgr, rules).expect_return();
    let instance = r.arg_str(0);
    let cc = h
        .accept_on_instance(&instance, USER_UID)
        .expect("accepted on the instance socket");
    h.hello(cc);
    World {
        h,
        svc,
        mgr,
        cc,
        instance,
    }
}

/// A call from `from` to `dest` on `/obj`, interface `org.example.Iface`.
fn call(h: &mut Harness, from: Client, dest: &str, member: &str) -> u32 {
    h.call(from, dest, "/obj", "org.example.Iface", member, &empty())
}

/// The reply `from` got for `serial`.
fn answer(h: &mut Harness, from: Client, serial: u32) -> Msg {
    h.reply(from, serial)
}

/// The calls `c` received.
fn calls_received(h: &mut Harness, c: Client) -> Vec<Msg> {
    h.recv_all(c)
        .into_iter()
        .filter(|m| m.msg_type == mtype::METHOD_CALL)
        .collect()
}

#[test]
fn invalid_allow_is_invalid_args_naming_element_and_field() {
    let mut h = Harness::new();
    let mgr = h.client();
    for (rules, want) in [
        (vec![(0x80u32, "org.a", "/", "")], "Allow[0]: flags"),
        (
            vec![(SEE, "org.ok", "/", ""), (SEE, ":1.1", "/", "")],
            "Allow[1]: bus name",
        ),
        (vec![(SEE, "nope", "/", "")], "bus name \"nope\""),
        (vec![(CALL, "org.a", "/", "org.a")], "interface and member"),
    ] {
        let e = h
            .add_server_allow(mgr, &rules)
            .expect_error(err::INVALID_ARGS);
        assert!(e.arg_str(0).contains(want), "{} lacks {want}", e.arg_str(0));
    }
    // The wrong type altogether.
    let mut b = BodyWriter::new();
    b.str("org.example.Sandbox").str("x");
    b.array("{sv}", |_| {});
    b.array("{sv}", |a| {
        a.dict_entry(|e| {
            e.str("Allow").variant("au", |v| {
                v.array("u", |_| {});
            });
        });
    });
    let e = h
        .driver_iface(mgr, C1, "AddServer", &b)
        .expect_error(err::INVALID_ARGS);
    assert!(e.arg_str(0).contains("a(usos)"), "{}", e.arg_str(0));
    let props = h.driver_iface(mgr, PROPS, "Get", &{
        let mut b = BodyWriter::new();
        b.str(C1).str("SupportedArguments");
        b
    });
    let listed = format!("{:?}", props.expect_return().args());
    assert!(listed.contains("\"Allow\""), "{listed}");
}

#[test]
fn hidden_names_behave_exactly_like_missing_ones() {
    let mut w = world(&[]);
    let (h, cc) = (&mut w.h, w.cc);
    // Error texts are those of a name nobody owns, byte for byte.
    let hidden = h.driver(cc, "GetNameOwner", &s("org.example.Svc"));
    let missing = h.driver(cc, "GetNameOwner", &s("org.example.Nobody"));
    let hidden = hidden.expect_error(err::NAME_HAS_NO_OWNER).arg_str(0);
    let missing = missing.expect_error(err::NAME_HAS_NO_OWNER).arg_str(0);
    assert_eq!(hidden.replace("Svc", "X"), missing.replace("Nobody", "X"));
    assert!(!h
        .driver(cc, "NameHasOwner", &s("org.example.Svc"))
        .arg_bool(0));
    let svc_unique = h.unique(w.svc);
    assert!(!h.driver(cc, "NameHasOwner", &s(&svc_unique)).arg_bool(0));
    h.driver(cc, "GetConnectionUnixUser", &s(&svc_unique))
        .expect_error(err::NAME_HAS_NO_OWNER);
    h.driver(cc, "GetConnectionCredentials", &s("org.example.Svc"))
        .expect_error(err::NAME_HAS_NO_OWNER);
    h.driver(cc, "ListQueuedOwners", &s("org.example.Svc"))
        .expect_error(err::NAME_HAS_NO_OWNER);
    let names = h.driver(cc, "ListNames", &empty()).arg_strs(0);
    let me = h.unique(cc);
    assert_eq!(
        names,
        vec![DBUS.to_string(), me],
        "only the driver and itself"
    );
    // Calls: ServiceUnknown as for a missing name, NameHasNoOwner with NO_AUTO_START.
    let s1 = call(&mut w.h, w.cc, "org.example.Svc", "Do");
    let s2 = call(&mut w.h, w.cc, "org.example.Nobody", "Do");
    let a = answer(&mut w.h, w.cc, s1)
        .expect_error(err::SERVICE_UNKNOWN)
        .arg_str(0);
    let b = answer(&mut w.h, w.cc, s2)
        .expect_error(err::SERVICE_UNKNOWN)
        .arg_str(0);
    assert_eq!(a.replace("Svc", "X"), b.replace("Nobody", "X"));
    let serial = w.h.send(
        w.cc,
        method_call(Some(&svc_unique), "/obj", Some("org.example.Iface"), "Do")
            .flags(flag::NO_AUTO_START),
        &empty(),
    );
    w.h.reply(w.cc, serial).expect_error(err::NAME_HAS_NO_OWNER);
    assert!(
        calls_received(&mut w.h, w.svc).is_empty(),
        "nothing got through"
    );
}

#[test]
fn see_only_names_are_visible_but_not_callable() {
    let mut w = world(&[(SEE, "org.example.Svc", "/", "")]);
    let owner =
        w.h.driver(w.cc, "GetNameOwner", &s("org.example.Svc"))
            .expect_return();
    assert_eq!(owner.arg_str(0), w.h.unique(w.svc));
    let names = w.h.driver(w.cc, "ListNames", &empty()).arg_strs(0);
    assert!(names.contains(&"org.example.Svc".to_string()), "{names:?}");
    assert!(
        names.contains(&w.h.unique(w.svc)),
        "its owner's unique name too"
    );
    let serial = call(&mut w.h, w.cc, "org.example.Svc", "Do");
    answer(&mut w.h, w.cc, serial).expect_error(err::ACCESS_DENIED);
    assert!(calls_received(&mut w.h, w.svc).is_empty());
}

#[test]
fn call_rules_match_path_interface_and_member() {
    let mut w = world(&[
        (CALL, "org.example.Svc", "/obj", "org.example.Iface.Do"),
        (
            CALL | PATH_TREE,
            "org.example.Svc",
            "/tree",
            "org.example.Other.*",
        ),
    ]);
    let ok = call(&mut w.h, w.cc, "org.example.Svc", "Do");
    let got = calls_received(&mut w.h, w.svc);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender.as_deref(), Some(&*w.h.unique(w.cc)));
    w.h.send(w.svc, reply_to(&got[0]), &empty());
    answer(&mut w.h, w.cc, ok).expect_return();
    let denied = call(&mut w.h, w.cc, "org.example.Svc", "Undo");
    answer(&mut w.h, w.cc, denied).expect_error(err::ACCESS_DENIED);
    let sub = w.h.call(
        w.cc,
        "org.example.Svc",
        "/tree/x/y",
        "org.example.Other",
        "Any",
        &empty(),
    );
    let elsewhere = w.h.call(
        w.cc,
        "org.example.Svc",
        "/treex",
        "org.example.Other",
        "Any",
        &empty(),
    );
    answer(&mut w.h, w.cc, elsewhere).expect_error(err::ACCESS_DENIED);
    assert_eq!(
        calls_received(&mut w.h, w.svc).len(),
        1,
        "only the /tree/x/y call"
    );
    assert!(
        w.h.try_reply(w.cc, sub).is_none(),
        "that one awaits the service"
    );
    // Unicast signals need the same rule.
    w.h.send(
        w.cc,
        signal(Some("org.example.Svc"), "/obj", "org.example.Iface", "Do"),
        &empty(),
    );
    w.h.send(
        w.cc,
        signal(Some("org.example.Svc"), "/obj", "org.example.Iface", "Nope"),
        &empty(),
    );
    let sigs: Vec<Msg> =
        w.h.recv_all(w.svc)
            .into_iter()
            .filter(|m| m.msg_type == mtype::SIGNAL)
            .collect();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].member.as_deref(), Some("Do"));
}

#[test]
fn name_subtrees_and_rights_follow_current_ownership() {
    let mut w = world(&[(CALL | PATH_TREE | NAME_TREE, "org.example.Allowed", "/", "")]);
    let svc2 = w.h.client();
    own(&mut w.h, svc2, "org.example.Allowed.Child");
    let unique2 = w.h.unique(svc2);
    // Its unique name carries the rights of the name it owns now.
    let ok = call(&mut w.h, w.cc, &unique2, "Do");
    assert_eq!(calls_received(&mut w.h, svc2).len(), 1);
    assert!(w.h.try_reply(w.cc, ok).is_none());
    w.h.driver(svc2, "ReleaseName", &s("org.example.Allowed.Child"))
        .expect_return();
    // The name is gone, and with it every right over the unique name.
    let after = call(&mut w.h, w.cc, &unique2, "Do");
    w.h.reply(w.cc, after).expect_error(err::SERVICE_UNKNOWN);
    assert!(!w.h.driver(w.cc, "NameHasOwner", &s(&unique2)).arg_bool(0));
    // A name that merely starts alike is not in the subtree.
    own(&mut w.h, svc2, "org.example.AllowedNot");
    let no = call(&mut w.h, w.cc, "org.example.AllowedNot", "Do");
    w.h.reply(w.cc, no).expect_error(err::SERVICE_UNKNOWN);
}

#[test]
fn replies_only_to_received_calls_and_only_once() {
    let mut w = world(&[]);
    // Outside peers may always call in (checked on the sending side only).
    let dest = w.h.unique(w.cc);
    let serial = call(&mut w.h, w.mgr, &dest, "Ask");
    let got = calls_received(&mut w.h, w.cc);
    assert_eq!(got.len(), 1);
    w.h.send(w.cc, reply_to(&got[0]), &empty());
    w.h.send(w.cc, reply_to(&got[0]), &empty());
    let replies: Vec<Msg> =
        w.h.recv_all(w.mgr)
            .into_iter()
            .filter(|m| m.reply_serial == Some(serial))
            .collect();
    assert_eq!(replies.len(), 1, "the duplicate reply is dropped");
    // A forged reply to a call never made to it goes nowhere.
    let svc_call = call(&mut w.h, w.mgr, "org.example.Svc", "Real");
    let forged = MessageBuilder::method_return(svc_call)
        .flags(0)
        .destination(&w.h.unique(w.mgr));
    w.h.send(w.cc, forged, &empty());
    let to_svc = calls_received(&mut w.h, w.svc);
    assert_eq!(to_svc.len(), 1);
    w.h.send(w.svc, reply_to(&to_svc[0]), &{
        let mut b = BodyWriter::new();
        b.str("genuine");
        b
    });
    let r = w.h.reply(w.mgr, svc_call).expect_return();
    assert_eq!(
        r.arg_str(0),
        "genuine",
        "the manager got the service's reply, not the forgery"
    );
}

#[test]
fn callers_become_visible_but_not_callable() {
    let mut w = world(&[]);
    let mgr_unique = w.h.unique(w.mgr);
    assert!(!w
        .h
        .driver(w.cc, "NameHasOwner", &s(&mgr_unique))
        .arg_bool(0));
    let dest = w.h.unique(w.cc);
    call(&mut w.h, w.mgr, &dest, "Ask");
    assert!(w
        .h
        .driver(w.cc, "NameHasOwner", &s(&mgr_unique))
        .arg_bool(0));
    let back = call(&mut w.h, w.cc, &mgr_unique, "Back");
    answer(&mut w.h, w.cc, back).expect_error(err::ACCESS_DENIED);
    // It sees the caller leave, then the name is as unknown as any other.
    w.h.driver(
        w.cc,
        "AddMatch",
        &s("type='signal',member='NameOwnerChanged'"),
    )
    .expect_return();
    w.h.disconnect(w.mgr);
    let gone: Vec<Msg> =
        w.h.recv_all(w.cc)
            .into_iter()
            .filter(|m| m.is_driver_signal("NameOwnerChanged"))
            .collect();
    assert_eq!(gone.len(), 1, "{gone:#?}");
    assert_eq!(gone[0].arg_str(0), mgr_unique);
    // A new connection is a new unique name: not a contact.
    let newcomer = w.h.client();
    assert!(!w
        .h
        .driver(w.cc, "NameHasOwner", &s(&w.h.unique(newcomer)))
        .arg_bool(0));
}

#[test]
fn broadcasts_in_need_a_receive_rule_and_broadcasts_out_flow() {
    let mut w = world(&[(BCAST, "org.example.Svc", "/news", "org.example.News.*")]);
    w.h.driver(w.cc, "AddMatch", &s("type='signal'"))
        .expect_return();
    let other = w.h.client();
    w.h.send(
        other,
        signal(None, "/news", "org.example.News", "Story"),
        &empty(),
    );
    w.h.send(
        w.svc,
        signal(None, "/news", "org.example.Ads", "Spam"),
        &empty(),
    );
    w.h.send(
        w.svc,
        signal(None, "/news", "org.example.News", "Story"),
        &empty(),
    );
    let got: Vec<String> =
        w.h.recv_all(w.cc)
            .into_iter()
            .filter(|m| m.msg_type == mtype::SIGNAL && !m.is_driver_signal("NameOwnerChanged"))
            .map(|m| {
                format!(
                    "{}:{}",
                    m.sender.clone().unwrap_or_default(),
                    m.member.clone().unwrap_or_default()
                )
            })
            .collect();
    assert_eq!(got, vec![format!("{}:Story", w.h.unique(w.svc))]);
    // The app's own broadcasts reach outside subscribers (MPRIS players rely on this).
    w.h.driver(
        other,
        "AddMatch",
        &s("type='signal',interface='org.mpris.MediaPlayer2.Player'"),
    )
    .expect_return();
    w.h.send(
        w.cc,
        signal(
            None,
            "/org/mpris/MediaPlayer2",
            "org.mpris.MediaPlayer2.Player",
            "Seeked",
        ),
        &empty(),
    );
    assert!(w
        .h
        .recv_all(other)
        .iter()
        .any(|m| m.member.as_deref() == Some("Seeked")));
}

#[test]
fn name_owner_changed_only_for_visible_names() {
    let mut w = world(&[(SEE, "org.example.Seen", "/", "")]);
    w.h.driver(
        w.cc,
        "AddMatch",
        &s("type='signal',member='NameOwnerChanged'"),
    )
    .expect_return();
    let other = w.h.client();
    own(&mut w.h, other, "org.example.Hidden");
    own(&mut w.h, other, "org.example.Seen");
    let nocs: Vec<String> =
        w.h.recv_all(w.cc)
            .into_iter()
            .filter(|m| m.is_driver_signal("NameOwnerChanged"))
            .map(|m| m.arg_str(0))
            .collect();
    assert_eq!(nocs, vec!["org.example.Seen".to_string()], "{nocs:?}");
    // A hidden name stays hidden when its owner is visible (it owns a seen name, or it
    // called the client): NameOwnerChanged must not reveal it.
    let caller = w.h.client();
    let client = w.h.unique(w.cc);
    call(&mut w.h, caller, &client, "Hi");
    own(&mut w.h, caller, "org.example.Secret");
    own(&mut w.h, other, "org.example.AlsoHidden");
    w.h.driver(w.cc, "GetId", &empty()).expect_return();
    let leaked: Vec<String> =
        w.h.recv_all(w.cc)
            .into_iter()
            .filter(|m| m.is_driver_signal("NameOwnerChanged"))
            .map(|m| m.arg_str(0))
            .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    assert_eq!(
        w.h.driver(w.cc, "GetNameOwner", &s("org.example.AlsoHidden"))
            .error_name
            .as_deref(),
        Some(err::NAME_HAS_NO_OWNER)
    );
    // And ListActivatableNames / ListNames agree.
    let names = w.h.driver(w.cc, "ListNames", &empty()).arg_strs(0);
    assert!(!names.contains(&"org.example.Hidden".to_string()));
    assert!(names.contains(&"org.example.Seen".to_string()));
}

#[test]
fn owning_names_needs_own_and_is_no_oracle() {
    let mut w = world(&[(OWN | NAME_TREE, "org.example.App", "/", "")]);
    let r =
        w.h.driver(w.cc, "RequestName", &su("org.example.App.Player", 0))
            .expect_return();
    assert_eq!(r.arg_u32(0), 1);
    w.h.driver(w.cc, "RequestName", &su("org.example.Other", 0))
        .expect_error(err::ACCESS_DENIED);
    // Releasing a name it may not own says AccessDenied whether or not it is owned.
    let owned = w.h.driver(w.cc, "ReleaseName", &s("org.example.Svc"));
    let free = w.h.driver(w.cc, "ReleaseName", &s("org.example.Free"));
    let a = owned.expect_error(err::ACCESS_DENIED).arg_str(0);
    let b = free.expect_error(err::ACCESS_DENIED).arg_str(0);
    assert_eq!(a.replace("Svc", "X"), b.replace("Free", "X"));
    let q =
        w.h.driver(w.cc, "ListQueuedOwners", &s("org.example.App.Player"))
            .expect_return();
    assert_eq!(q.arg_strs(0), vec![w.h.unique(w.cc)]);
}

#[test]
fn fds_out_need_send_unix_fds_and_blocked_replies_answer_the_caller() {
    let mut w = world(&[
        (CALL | PATH_TREE, "org.example.Svc", "/", ""),
        (CALL | PATH_TREE | FDS, "org.example.FdOk", "/", ""),
    ]);
    let fdok = w.h.client();
    own(&mut w.h, fdok, "org.example.FdOk");
    let (r, _w) = nix::unistd::pipe().unwrap();
    let smuggle = w.h.send_fds(
        w.cc,
        method_call(
            Some("org.example.Svc"),
            "/obj",
            Some("org.example.Iface"),
            "Take",
        ),
        &empty(),
        vec![r],
    );
    w.h.reply(w.cc, smuggle).expect_error(err::ACCESS_DENIED);
    assert!(calls_received(&mut w.h, w.svc).is_empty());
    let (r, _w2) = nix::unistd::pipe().unwrap();
    w.h.send_fds(
        w.cc,
        method_call(
            Some("org.example.FdOk"),
            "/obj",
            Some("org.example.Iface"),
            "Take",
        ),
        &empty(),
        vec![r],
    );
    let got = calls_received(&mut w.h, fdok);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].n_fds, 1);
    // An outside caller asks; the contained app answers with an fd it may not pass out.
    let dest = w.h.unique(w.cc);
    let ask = call(&mut w.h, w.mgr, &dest, "GiveFd");
    let incoming = calls_received(&mut w.h, w.cc);
    let (r, _w3) = nix::unistd::pipe().unwrap();
    w.h.send_fds(w.cc, reply_to(&incoming[0]), &empty(), vec![r]);
    let e = w.h.reply(w.mgr, ask).expect_error(err::ACCESS_DENIED);
    assert_eq!(e.n_fds, 0, "the caller gets an error, never the fd");
}

#[test]
fn hidden_activatable_names_are_not_started() {
    let mut h = Harness::with_services(
        &[
            ("org.example.Hidden", "/bin/true"),
            ("org.example.Startable", "/bin/true"),
        ],
        &[],
    );
    let mgr = h.client();
    let inst = h
        .add_server_allow(mgr, &[(CALL | PATH_TREE, "org.example.Startable", "/", "")])
        .expect_return()
        .arg_str(0);
    let cc = h.accept_on_instance(&inst, USER_UID).unwrap();
    h.hello(cc);
    let names = h.driver(cc, "ListActivatableNames", &empty()).arg_strs(0);
    assert!(
        names.contains(&"org.example.Startable".to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"org.example.Hidden".to_string()),
        "{names:?}"
    );
    h.driver(cc, "StartServiceByName", &su("org.example.Hidden", 0))
        .expect_error(err::SERVICE_UNKNOWN);
    let auto = h.call(
        cc,
        "org.example.Hidden",
        "/",
        "org.example.I",
        "M",
        &empty(),
    );
    h.reply(cc, auto).expect_error(err::SERVICE_UNKNOWN);
    assert!(
        h.spawned().is_empty(),
        "{:?}",
        h.spawned()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    );
    h.call(
        cc,
        "org.example.Startable",
        "/",
        "org.example.I",
        "M",
        &empty(),
    );
    assert_eq!(h.spawned().len(), 1);
    assert_eq!(h.spawned()[0].name, "org.example.Startable");
}

#[test]
fn driver_methods_outside_the_view_are_refused() {
    let mut w = world(&[]);
    let mut b = BodyWriter::new();
    b.str(DBUS_IFACE).str("Features");
    w.h.driver_iface(w.cc, PROPS, "Get", &b)
        .expect_error(err::ACCESS_DENIED);
    w.h.driver(w.cc, "ReloadConfig", &empty())
        .expect_error(err::ACCESS_DENIED);
    let mut p = BodyWriter::new();
    p.object_path(&w.instance);
    w.h.driver_iface(w.cc, C1, "GetInstanceInfo", &p)
        .expect_error(err::ACCESS_DENIED);
    w.h.driver(w.cc, "AddMatch", &s("eavesdrop=true,type='method_call'"))
        .expect_error(err::ACCESS_DENIED);
    // What stays reachable.
    w.h.driver(w.cc, "GetId", &empty()).expect_return();
    w.h.driver(w.cc, "AddMatch", &s("type='signal'"))
        .expect_return();
    let me = w.h.unique(w.cc);
    w.h.driver_iface(w.cc, C1, "GetConnectionInstance", &s(&me))
        .expect_return();
}

#[test]
fn same_instance_peers_see_and_call_each_other_but_siblings_do_not() {
    let mut w = world(&[]);
    let peer = w.h.accept_on_instance(&w.instance, USER_UID).unwrap();
    w.h.hello(peer);
    let peer_unique = w.h.unique(peer);
    assert!(w
        .h
        .driver(w.cc, "NameHasOwner", &s(&peer_unique))
        .arg_bool(0));
    call(&mut w.h, w.cc, &peer_unique, "Hi");
    assert_eq!(calls_received(&mut w.h, peer).len(), 1);
    // A second filtered instance of the same manager is another world.
    let other = w.h.add_server_allow(w.mgr, &[]).expect_return().arg_str(0);
    let sibling = w.h.accept_on_instance(&other, USER_UID).unwrap();
    w.h.hello(sibling);
    let sib_unique = w.h.unique(sibling);
    assert!(!w
        .h
        .driver(w.cc, "NameHasOwner", &s(&sib_unique))
        .arg_bool(0));
    let no = call(&mut w.h, w.cc, &sib_unique, "Hi");
    w.h.reply(w.cc, no).expect_error(err::SERVICE_UNKNOWN);
}

#[test]
fn instances_without_allow_are_unfiltered() {
    let mut h = Harness::new();
    let svc = h.client();
    own(&mut h, svc, "org.example.Svc");
    let mgr = h.client();
    let inst = h.add_server(mgr, "org.example.Sandbox", "free");
    let cc = h.accept_on_instance(&inst.path, USER_UID).unwrap();
    h.hello(cc);
    h.driver(cc, "GetNameOwner", &s("org.example.Svc"))
        .expect_return();
    h.call(cc, "org.example.Svc", "/", "org.example.I", "M", &empty());
    assert!(h
        .recv_all(svc)
        .iter()
        .any(|m| m.msg_type == mtype::METHOD_CALL));
}

#[test]
fn escape_attempts_through_the_driver_fail() {
    let mut w = world(&[(SEE | CALL | BCAST | PATH_TREE, "org.example.Svc", "/", "")]);
    // Eavesdropping, however the rule is spelled.
    for rule in [
        "eavesdrop=true",
        "eavesdrop='true',type='method_call'",
        "type='method_call', eavesdrop = 'true'",
        "eavesdrop='true',sender='org.example.Svc'",
    ] {
        // Refused, as not allowed or as not a valid rule: never installed.
        let r = w.h.driver(w.cc, "AddMatch", &s(rule));
        assert!(
            [err::ACCESS_DENIED, err::MATCH_RULE_INVALID]
                .contains(&r.error_name.as_deref().unwrap_or("")),
            "{rule}: {r:#?}"
        );
    }
    // Monitoring, nested containers, activation environment, statistics.
    let mut mon = BodyWriter::new();
    mon.str_array(Vec::<&str>::new()).u32(0);
    w.h.driver_iface(
        w.cc,
        "org.freedesktop.DBus.Monitoring",
        "BecomeMonitor",
        &mon,
    )
    .expect_error(err::ACCESS_DENIED);
    assert!(!w.h.is_monitor(w.cc));
    w.h.add_server_allow(w.cc, &[(SEE | NAME_TREE, "", "/", "")])
        .expect_error(err::ACCESS_DENIED);
    let mut env = BodyWriter::new();
    env.array("{ss}", |_| {});
    w.h.driver(w.cc, "UpdateActivationEnvironment", &env)
        .expect_error(err::ACCESS_DENIED);
    w.h.driver_iface(
        w.cc,
        "org.freedesktop.DBus.Debug.Stats",
        "GetStats",
        &empty(),
    )
    .expect_error(err::ACCESS_DENIED);
    // A call between two outside peers is never copied to it, even with a broad rule.
    w.h.driver(w.cc, "AddMatch", &s("type='method_call'"))
        .expect_return();
    let other = w.h.client();
    call(&mut w.h, other, "org.example.Svc", "Private");
    w.h.driver(w.cc, "GetId", &empty()).expect_return();
    assert!(calls_received(&mut w.h, w.cc).is_empty());
}
