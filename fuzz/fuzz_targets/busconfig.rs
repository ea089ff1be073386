//! Busconfig XML through the configuration loader and the policy compiler.
//!
//! The input is the text of a configuration file at `<dir>/fuzz.conf`, where `<dir>` is a
//! directory this target fills once with files an input can reach by relative path:
//! `inc.conf` (valid), `broken.conf` (invalid), `loop.conf` (includes itself),
//! `conf.d/` (two valid drop-ins and a broken one) and `empty.d/`. Inputs naming device or
//! kernel files (`dev/`, `proc/`, `sys/`) are skipped: reading `/dev/zero` would never end,
//! and a bus reading such a configuration is its administrator's doing, not a peer's.
//!
//! Properties checked besides "no panic":
//! - loading is deterministic: the same text gives the same configuration or error;
//! - an error in the top-level file names a line within it;
//! - a configuration that loads is the same when the text is instead `<include>`d from a
//!   one-line wrapper (include merging is transparent, as in dbus-daemon);
//! - the compiled policy answers for several uids and groups (connect, own, send, receive)
//!   without panicking, and a policy that `allows_everything` allows each sample;
//! - every limit name reads back, and a bus starts with the configuration and accepts a
//!   connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicebus::bus::limits::Limits;
use sluicebus::bus::policy::MsgFacts;
use sluicebus::bus::{Bus, BusOptions, HostFacts};
use sluicebus::config::{self, Config};
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

thread_local! {
    static DIR: PathBuf = make_dir();
}

const INC: &str = r#"<busconfig>
  <listen>unix:path=/run/inc</listen>
  <policy context="default"><allow own_prefix="org.inc"/></policy>
  <limit name="max_match_rules_per_connection">7</limit>
</busconfig>"#;

/// The files inputs can include, in a directory of their own per process.
fn make_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluicebus-fuzz-busconfig-{}", std::process::id()));
    let files: [(&str, &str); 6] = [
        ("inc.conf", INC),
        ("broken.conf", "<busconfig><nope/></busconfig>"),
        ("loop.conf", "<busconfig><include>loop.conf</include></busconfig>"),
        ("conf.d/10-a.conf", "<busconfig><policy user=\"0\"><allow own=\"*\"/></policy></busconfig>"),
        ("conf.d/20-b.conf", "<busconfig><limit name=\"max_names_per_connection\">3</limit><auth>ANONYMOUS</auth></busconfig>"),
        ("conf.d/30-broken.conf", "<busconfig><limit name=\"nope\">1</limit></busconfig>"),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().expect("has a parent")).expect("create fuzz config dir");
        fs::write(&p, text).expect("write fuzz config file");
    }
    fs::create_dir_all(dir.join("empty.d")).expect("create fuzz config dir");
    dir
}

/// A configuration with the path it was loaded from taken out, for comparisons.
fn shape(c: &Config) -> String {
    let mut c = c.clone();
    c.path = PathBuf::new();
    format!("{c:?}")
}

fn sample_facts() -> [MsgFacts<'static>; 3] {
    [
        MsgFacts {
            msg_type: 1,
            interface: Some("org.example.I"),
            member: Some("Ping"),
            error_name: None,
            path: Some("/org/example"),
            has_destination: true,
            ..MsgFacts::default()
        },
        MsgFacts {
            msg_type: 4,
            interface: Some("org.freedesktop.DBus"),
            member: Some("NameOwnerChanged"),
            error_name: None,
            path: Some("/org/freedesktop/DBus"),
            has_destination: false,
            ..MsgFacts::default()
        },
        MsgFacts {
            msg_type: 3,
            interface: None,
            member: None,
            error_name: Some("org.example.Error"),
            path: None,
            has_destination: true,
            ..MsgFacts::default()
        },
    ]
}

fn check_policy(c: &Config) {
    let p = &c.policy;
    let everything = p_allows_everything(c);
    for (uid, gids) in [
        (None, &[][..]),
        (Some(0), &[0][..]),
        (Some(1000), &[1000, 27][..]),
        (Some(4242), &[][..]),
    ] {
        let _ = p.allows_connect(uid, gids, 4242);
        let cp = p.for_connection(uid, gids);
        for name in ["org.example.Name", "org.inc.X", "a.b"] {
            let own = cp.can_own(name);
            assert!(
                !everything || own,
                "allows everything but not owning {name}"
            );
        }
        for m in &sample_facts() {
            let send = cp.can_send(m, &["org.example.Name", ":1.3"], Some("org.example.Name"));
            let recv = cp.can_receive(m, &[":1.4"]);
            assert!(
                !everything || (send && recv),
                "allows everything but not {m:?}"
            );
            let _ = cp.send_rules_matched(m, &[], None);
            let _ = cp.receive_rules_matched(m, &[]);
        }
    }
}

/// Whether every connection's policy says it allows everything (uid 1000 as the sample).
fn p_allows_everything(c: &Config) -> bool {
    c.policy
        .for_connection(Some(1000), &[1000, 27])
        .allows_everything()
}

fn start_bus(c: Config) {
    let mut bus = Bus::new(c, BusOptions::default(), HostFacts::fixed(Instant::now()));
    let creds = sluicebus::bus::connection::Credentials {
        uid: Some(1000),
        pid: Some(1),
        gids: Some(vec![1000]),
        security_label: None,
    };
    let id = bus.accept(creds);
    let _ = bus.authenticated(id, Some(1000), true);
    bus.disconnect(id);
    while bus.poll_effect().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["dev/", "proc/", "sys/"].iter().any(|s| text.contains(s)) {
        return;
    }
    let dir = DIR.with(|d| d.clone());
    let origin = dir.join("fuzz.conf");
    let first = config::load_from_str(text, &origin);
    let second = config::load_from_str(text, &origin);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(shape(a), shape(b), "loading is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a, b, "loading is not deterministic"),
        _ => panic!("loading is not deterministic: {first:?} then {second:?}"),
    }
    let c = match first {
        Ok(c) => c,
        Err(e) => {
            if e.file == origin {
                let lines = text.lines().count() + 1;
                assert!(
                    e.line as usize <= lines,
                    "error on line {} of {lines}: {e}",
                    e.line
                );
            }
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // The same text included from a wrapper loads the same (the wrapper lives beside it,
    // so relative paths resolve alike, under a name no input can include by accident).
    if !text.contains("wrapped") {
        let inner = dir.join("wrapped.conf.in");
        fs::write(&inner, text).expect("write wrapped config");
        let outer = "<busconfig><include>wrapped.conf.in</include></busconfig>";
        match config::load_from_str(outer, &origin) {
            Ok(w) => assert_eq!(shape(&w), shape(&c), "an included file loads differently"),
            Err(e) => panic!("loads alone but not included: {e}"),
        }
    }
    for name in Limits::NAMES {
        assert!(
            c.limits.get(name).is_some(),
            "limit {name} does not read back"
        );
    }
    check_policy(&c);
    start_bus(c);
});
