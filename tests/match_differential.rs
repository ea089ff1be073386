//! Match rules side by side with dbus-daemon: one subscriber per rule, on sluicebus and on
//! the reference dbus-daemon, and a sender broadcasting signals that vary in path,
//! interface, member and arguments (strings, object paths, other types, more than one); the
//! set of signals each rule delivers must be the same on both buses. Every subscriber ends
//! with a round-trip sentinel after the sender's, so nothing is waited for.

mod common;

use common::*;
use std::path::Path;

fn rules() -> Vec<&'static str> {
    vec![
        "type='signal'",
        "path='/a'",
        "path='/a/b'",
        "path_namespace='/a'",
        "path_namespace='/'",
        "path_namespace='/a/b'",
        "interface='com.example.I'",
        "member='S'",
        "interface='com.example.I',member='T'",
        "sender='com.example.Sender'",
        "sender='com.example.Nobody'",
        "arg0='x'",
        "arg0=''",
        "arg0='/a/b'",
        "arg1='y'",
        "arg2='z'",
        "arg0='x',arg1='y'",
        "arg0path='/a/'",
        "arg0path='/a/b'",
        "arg0path='/a/b/'",
        "arg0path='/'",
        "arg0path='/a'",
        "arg1path='/a/'",
        "arg0namespace='com.example'",
        "arg0namespace='com'",
        "arg0namespace='com.example.Foo'",
        "arg0='com.example.Foo'",
        "path='/a',arg0='x'",
        "type='signal',path_namespace='/a',member='S'",
        "type='method_call'",
        "interface='com.example.I2'",
    ]
}

/// A signal: path, interface, member, arguments.
struct Sig {
    path: &'static str,
    iface: &'static str,
    member: &'static str,
    args: Vec<Arg>,
}

fn signals() -> Vec<Sig> {
    let sig = |path, iface, member, args| Sig {
        path,
        iface,
        member,
        args,
    };
    let st = |v: &str| Arg::Str(v.to_string());
    let p = |v: &str| Arg::Path(v.to_string());
    const I: &str = "com.example.I";
    vec![
        sig("/", I, "S", vec![]),
        sig("/a", I, "S", vec![]),
        sig("/ab", I, "S", vec![]),
        sig("/a/b", I, "S", vec![]),
        sig("/a/b/c", I, "T", vec![]),
        sig("/a", "com.example.I2", "S", vec![]),
        sig("/a", I, "S", vec![st("x")]),
        sig("/a", I, "S", vec![st("")]),
        sig("/a", I, "S", vec![st("x"), st("y")]),
        sig("/a", I, "S", vec![st("x"), st("y"), st("z")]),
        sig("/a", I, "S", vec![st("w"), st("y")]),
        sig("/a", I, "S", vec![Arg::U32(7), st("y")]),
        sig("/a", I, "S", vec![st("/a/b")]),
        sig("/a", I, "S", vec![p("/a/b")]),
        sig("/a", I, "S", vec![st("/a/")]),
        sig("/a", I, "S", vec![p("/a")]),
        sig("/a", I, "S", vec![st("/a/b/")]),
        sig("/a", I, "S", vec![st("/")]),
        sig("/a", I, "S", vec![p("/")]),
        sig("/a", I, "S", vec![st("/ab")]),
        sig("/a", I, "S", vec![st("x"), st("/a/b")]),
        sig("/a", I, "S", vec![st("x"), p("/a/c")]),
        sig("/a", I, "S", vec![st("com.example")]),
        sig("/a", I, "S", vec![st("com.example.Foo")]),
        sig("/a", I, "S", vec![st("com.example.Foo.Bar")]),
        sig("/a", I, "S", vec![st("com.examplefoo")]),
        sig("/a", I, "S", vec![st("com")]),
        sig("/a", I, "S", vec![st("com.")]),
        sig("/a", I, "S", vec![Arg::Array(vec![st("x")])]),
        sig("/a", I, "S", vec![Arg::Sig("x".into())]),
    ]
}

/// For each rule, the numbers of the signals its subscriber received.
fn deliveries(daemon: &Path) -> Vec<(String, Vec<usize>)> {
    let bus = TestBus::with_daemon(daemon, &session_config(""));
    let mut sender = bus.client();
    assert_eq!(sender.request_name("com.example.Sender", 0), 1);
    let mut subs: Vec<(String, RawConn)> = rules()
        .into_iter()
        .map(|r| {
            let mut c = bus.client();
            c.add_match(r);
            (r.to_string(), c)
        })
        .collect();
    for (n, s) in signals().iter().enumerate() {
        sender.send(MsgSpec {
            msg_type: msg_type::SIGNAL,
            path: Some(s.path),
            interface: Some(s.iface),
            member: Some(s.member),
            // The signal's number, so a receiver can tell them apart.
            serial: 1000 + n as u32,
            args: &s.args,
            ..Default::default()
        });
    }
    sender.barrier();
    subs.iter_mut()
        .map(|(rule, c)| {
            let got = c
                .sync()
                .iter()
                .filter(|m| m.msg_type == msg_type::SIGNAL && m.serial >= 1000)
                .map(|m| (m.serial - 1000) as usize)
                .collect();
            (rule.clone(), got)
        })
        .collect()
}

#[test]
fn match_rules_deliver_what_dbus_daemon_delivers() {
    let ours = deliveries(&daemon_path());
    let theirs = deliveries(&reference_daemon());
    let total: usize = theirs.iter().map(|(_, v)| v.len()).sum();
    // The rules must tell signals apart, or the comparison says little.
    assert!(total > 100, "only {total} deliveries");
    let diffs: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, b)| format!("{}: sluicebus {:?}, dbus-daemon {:?}", a.0, a.1, b.1))
        .collect();
    assert!(
        diffs.is_empty(),
        "rules deliver differently:\n{}",
        diffs.join("\n")
    );
}
