//! Name ownership side by side with dbus-daemon: scripted RequestName / ReleaseName calls
//! with every flag combination from three clients (x, y, z), disconnections and queue
//! queries, played on sluicebus and on the reference dbus-daemon. The reply codes and every
//! NameAcquired, NameLost and NameOwnerChanged each client received (unique names by role)
//! must be the same on both buses.

mod common;

use common::*;

const N: &str = "com.example.N";
/// RequestName flags.
const ALLOW: u32 = 1;
const REPLACE: u32 = 2;
const NO_QUEUE: u32 = 4;

/// One step: who does what.
#[derive(Clone, Copy)]
enum Op {
    Request(usize, u32),
    Release(usize),
    Queue(usize),
    Owner(usize),
    Leave(usize),
}

fn scripts() -> Vec<(&'static str, Vec<Op>)> {
    use Op::*;
    vec![
        (
            "queue, then the owner releases",
            vec![Request(0, 0), Request(1, 0), Release(0), Owner(2)],
        ),
        (
            "replace an owner that allows it",
            vec![Request(0, ALLOW), Request(1, REPLACE), Queue(2)],
        ),
        (
            "replace an owner that does not allow it",
            vec![Request(0, 0), Request(1, REPLACE), Queue(2)],
        ),
        (
            "replaced owner without NO_QUEUE stays queued",
            vec![
                Request(0, ALLOW),
                Request(1, REPLACE | NO_QUEUE),
                Queue(2),
                Release(1),
                Owner(2),
            ],
        ),
        (
            "replaced owner with NO_QUEUE leaves",
            vec![Request(0, ALLOW | NO_QUEUE), Request(1, REPLACE), Queue(2)],
        ),
        (
            "NO_QUEUE against an owner",
            vec![Request(0, 0), Request(1, NO_QUEUE), Queue(2)],
        ),
        (
            "owner asks again",
            vec![
                Request(0, 0),
                Request(0, 0),
                Request(0, ALLOW),
                Request(1, REPLACE),
                Queue(2),
            ],
        ),
        (
            "owner leaves, queue moves up",
            vec![
                Request(0, 0),
                Request(1, 0),
                Request(2, 0),
                Leave(0),
                Queue(1),
                Owner(2),
            ],
        ),
        (
            "queued one releases",
            vec![Request(0, 0), Request(1, 0), Release(1), Queue(2)],
        ),
        (
            "queued one asks again with other flags",
            vec![
                Request(0, ALLOW),
                Request(1, 0),
                Request(1, REPLACE),
                Queue(2),
            ],
        ),
        (
            "owner starts allowing replacement later",
            vec![
                Request(0, 0),
                Request(1, REPLACE),
                Request(0, ALLOW),
                Queue(2),
                Request(1, REPLACE),
                Queue(2),
            ],
        ),
        (
            "release what nobody or somebody else owns",
            vec![Release(0), Request(1, 0), Release(0), Queue(2)],
        ),
        (
            "chain of replacements",
            vec![
                Request(0, ALLOW | REPLACE),
                Request(1, ALLOW | REPLACE),
                Request(2, REPLACE),
                Queue(0),
                Release(2),
                Queue(0),
                Owner(1),
            ],
        ),
        (
            "all flags",
            vec![
                Request(0, ALLOW | REPLACE | NO_QUEUE),
                Request(1, ALLOW | REPLACE | NO_QUEUE),
                Request(2, ALLOW | REPLACE | NO_QUEUE),
                Queue(0),
            ],
        ),
        (
            "queued leaver",
            vec![
                Request(0, 0),
                Request(1, 0),
                Request(2, 0),
                Leave(1),
                Queue(0),
                Release(0),
                Owner(2),
            ],
        ),
    ]
}

/// The script played on a fresh bus of `daemon`, described without bus-specific names.
fn play(daemon: &std::path::Path, script: &[Op]) -> String {
    let bus = TestBus::with_daemon(daemon, &session_config(""));
    let mut peers: Vec<Option<RawConn>> = (0..3)
        .map(|_| {
            let mut c = bus.client();
            c.add_match(&format!("member='NameOwnerChanged',arg0='{N}'"));
            Some(c)
        })
        .collect();
    let roles: Vec<(String, &str)> = peers
        .iter()
        .zip(["x", "y", "z"])
        .map(|(c, r)| {
            (
                c.as_ref()
                    .map(|c| c.unique().to_string())
                    .unwrap_or_default(),
                r,
            )
        })
        .collect();
    let role = |v: &str| -> String {
        roles
            .iter()
            .find(|(u, _)| u == v)
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| v.to_string())
    };
    let describe = |m: &RawMsg| -> String {
        let args: Vec<String> = m
            .args
            .iter()
            .map(|a| match a {
                Arg::Str(v) => role(v),
                Arg::U32(u) => u.to_string(),
                Arg::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Arg::Str(v) => role(v),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => format!("{other:?}"),
            })
            .collect();
        match m.msg_type {
            msg_type::ERROR => format!("error {}", m.error_name.as_deref().unwrap_or("")),
            msg_type::SIGNAL => {
                format!("{}({})", m.member.as_deref().unwrap_or(""), args.join(" "))
            }
            _ => format!("return {}", args.join(" ")),
        }
    };
    let mut out = String::new();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); 3];
    for op in script {
        let (who, member, args): (usize, &str, Vec<Arg>) = match *op {
            Op::Request(w, f) => (w, "RequestName", vec![s(N), Arg::U32(f)]),
            Op::Release(w) => (w, "ReleaseName", vec![s(N)]),
            Op::Queue(w) => (w, "ListQueuedOwners", vec![s(N)]),
            Op::Owner(w) => (w, "GetNameOwner", vec![s(N)]),
            Op::Leave(w) => {
                peers[w] = None;
                // Go on once the bus has handled the hang-up: until then the leaver's
                // unique name still has its owner (each try is a round trip, not a sleep).
                let leaver = roles[w].0.clone();
                let watcher = (0..3).find(|&i| peers[i].is_some()).expect("a watcher");
                let c = peers[watcher].as_mut().expect("open");
                loop {
                    let r = c.driver("GetNameOwner", &[s(&leaver)]);
                    if r.msg_type == msg_type::ERROR {
                        break;
                    }
                    std::thread::yield_now();
                }
                out += &format!("{} leaves\n", ["x", "y", "z"][w]);
                continue;
            }
        };
        let c = peers[who].as_mut().expect("an open peer");
        let r = c.driver(member, &args);
        out += &format!(
            "{} {member}({:?}) -> {}\n",
            ["x", "y", "z"][who],
            op_flags(op),
            describe(&r)
        );
    }
    for (i, p) in peers.iter_mut().enumerate() {
        if let Some(c) = p {
            for m in c.sync() {
                let relevant = m.msg_type == msg_type::SIGNAL
                    && m.args
                        .first()
                        .map(|a| matches!(a, Arg::Str(v) if v == N))
                        .unwrap_or(false);
                if relevant {
                    seen[i].push(describe(&m));
                }
            }
        }
    }
    for (i, s) in seen.iter().enumerate() {
        out += &format!("{} saw: {}\n", ["x", "y", "z"][i], s.join("; "));
    }
    out
}

fn op_flags(op: &Op) -> u32 {
    match op {
        Op::Request(_, f) => *f,
        _ => 0,
    }
}

#[test]
fn name_ownership_matches_dbus_daemon() {
    let reference = reference_daemon();
    let mut table = SideBySide::new("scripts", "NAMES_DIFFERENTIAL_TABLE");
    for (title, script) in scripts() {
        table.check(
            title,
            &play(&daemon_path(), &script),
            &play(&reference, &script),
        );
    }
    table.finish();
}
