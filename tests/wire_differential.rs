//! The validators against libdbus, the reference implementation: signatures (whole and single
//! complete types), object paths, interface, member, error and bus names. Every short string
//! over an alphabet of the characters that matter, pseudo-random longer ones and the length
//! limits; libdbus answers through its public `dbus_validate_*` and `dbus_signature_validate*`
//! functions (tests/py/libdbus_validate.py, ctypes), and both must agree on every input.
//!
//! One difference is deliberate and kept out of the inputs: libdbus counts only consecutive
//! `a` codes against the 32-array limit, so `a(a(…))` with more than 32 arrays passes its
//! signature check (and fails its body check once a value is that deep); sluicebus counts
//! arrays through structs and dict entries, as the specification's nesting limit reads. The
//! random signatures here have at most 32 `a` codes.
//!
//! Messages too: the ones in tests/data/libdbus_messages.hex (kept from a coverage-guided fuzz
//! corpus) must get the same verdict from `Message::parse` as from `dbus_message_demarshal`.
//! Left out of that file are messages whose header field 10 is not an object path: libdbus
//! 1.14 still type-checks field 10 from the withdrawn Containers1 experiment, but the
//! specification does not define it, so sluicebus ignores and strips it like any unknown field.
//!
//! Another difference is checked as such: libdbus takes any `:`-prefixed string of name characters whose
//! dots are each followed by one as a unique name (`:`, `:a`, `:.a`); the specification wants
//! at least one `.` and no empty element, and sluicebus and dbus-broker follow it (a message
//! addressed to `:a` is invalid there; dbus-daemon answers it with ServiceUnknown). Those
//! inputs must be refused by sluicebus, whatever libdbus says.

mod common;

use common::py_dir;
use sluicebus::wire::message::Message;
use sluicebus::wire::names;
use sluicebus::wire::signature::{is_single_complete_type, is_valid_signature};
use std::io::Write;
use std::process::{Command, Stdio};

/// Every string of length 0..=`max` over `alphabet`.
fn all_strings(alphabet: &str, max: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut layer = vec![String::new()];
    for _ in 0..max {
        layer = layer
            .iter()
            .flat_map(|p| alphabet.chars().map(move |c| format!("{p}{c}")))
            .collect();
        all.extend(layer.iter().cloned());
    }
    all
}

/// The bytes a hex string spells.
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A small deterministic generator (xorshift64), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    /// `parts` concatenated, 1 to `max` of them, picked at random.
    fn joined(&mut self, parts: &[&str], max: usize) -> String {
        let n = 1 + self.below(max);
        (0..n).map(|_| parts[self.below(parts.len())]).collect()
    }
}

/// libdbus's verdict on each `(kind, string)`.
fn libdbus(inputs: &[(&str, String)]) -> Vec<bool> {
    let mut child = Command::new("/usr/bin/python3")
        .arg(py_dir().join("libdbus_validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3");
    let mut stdin = child.stdin.take().expect("stdin");
    let text: String = inputs.iter().map(|(k, s)| format!("{k}\t{s}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("python output");
    writer.join().expect("writer").expect("write inputs");
    assert!(
        out.status.success(),
        "tests/py/libdbus_validate.py failed (is libdbus-1.so.3 installed?)"
    );
    let verdicts: Vec<bool> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "1")
        .collect();
    assert_eq!(verdicts.len(), inputs.len(), "one verdict per input");
    verdicts
}

fn ours(kind: &str, s: &str) -> bool {
    match kind {
        "sig" => is_valid_signature(s.as_bytes()),
        "sig1" => is_single_complete_type(s.as_bytes()),
        "path" => names::is_valid_object_path(s),
        "iface" => names::is_valid_interface(s),
        "member" => names::is_valid_member(s),
        "error" => names::is_valid_error_name(s),
        "bus" => names::is_valid_bus_name(s),
        "msg" => Message::parse(std::rc::Rc::from(unhex(s)), 0).is_ok(),
        _ => unreachable!("unknown kind {kind}"),
    }
}

/// A unique name libdbus accepts against the specification's rules for bus names: no `.`
/// after the colon, or one right after it (an empty first element).
fn lax_unique_name(kind: &str, s: &str) -> bool {
    kind == "bus"
        && s.strip_prefix(':')
            .is_some_and(|rest| !rest.contains('.') || rest.starts_with('.'))
}

/// Runs every input through both and lists the disagreements (at most 20 shown); on
/// [`lax_unique_name`]s sluicebus must refuse.
fn assert_agree(inputs: &[(&str, String)]) {
    let theirs = libdbus(inputs);
    let diffs: Vec<String> = inputs
        .iter()
        .zip(&theirs)
        .filter(|((k, s), &t)| {
            let want = t && !lax_unique_name(k, s);
            ours(k, s) != want
        })
        .map(|((k, s), &t)| format!("{k} {s:?}: libdbus {t}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} of {} inputs judged differently, e.g.:\n{}",
        diffs.len(),
        inputs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
}

#[test]
fn signatures_agree_with_libdbus() {
    let mut inputs: Vec<(&str, String)> = Vec::new();
    for s in all_strings("ay(){}vs", 6) {
        inputs.push(("sig", s.clone()));
        inputs.push(("sig1", s));
    }
    let mut rng = Rng(0x5eed_0f51_65c0);
    let parts = [
        "a", "(", ")", "{", "}", "a{s", "a{sv}", "y", "s", "v", "(y)", "ay", "((", "))", "h", "z",
    ];
    let exhaustive = inputs.len();
    while inputs.len() < exhaustive + 2 * 100_000 {
        let s = rng.joined(&parts, 40);
        if s.matches('a').count() <= 32 {
            inputs.push(("sig", s.clone()));
            inputs.push(("sig1", s));
        }
    }
    // Around the limits: 32 of each kind of nesting, and one more; the 255-byte length.
    for n in [31, 32, 33] {
        for (open, close) in [("a", ""), ("(", ")"), ("a{s", "}"), ("a{s(", ")}")] {
            let k = if open == "a{s(" { 16 } else { n };
            let s = format!("{}y{}", open.repeat(k), close.repeat(k));
            inputs.push(("sig", s.clone()));
            inputs.push(("sig1", s));
        }
        let s = format!("a{{s{}y{}}}", "(".repeat(n), ")".repeat(n));
        inputs.push(("sig", s));
    }
    for n in [254, 255, 256] {
        inputs.push(("sig", "y".repeat(n)));
        inputs.push(("sig1", format!("({})", "y".repeat(n - 2))));
    }
    assert_agree(&inputs);
}

#[test]
fn names_and_paths_agree_with_libdbus() {
    let mut inputs: Vec<(&str, String)> = Vec::new();
    let kinds = ["path", "iface", "member", "error", "bus"];
    for s in all_strings("a1._:/-", 6) {
        for k in kinds {
            inputs.push((k, s.clone()));
        }
    }
    let mut rng = Rng(0x0a11_7a3e_5eed);
    let parts = [
        "a", "B", "9", "_", "-", ".", ":", "/", "ab", "x.y", ":1.", "/o", "é", " ",
    ];
    for _ in 0..40_000 {
        let s = rng.joined(&parts, 24);
        for k in kinds {
            inputs.push((k, s.clone()));
        }
    }
    // The 255-byte limit of names (paths have none).
    for n in [254, 255, 256] {
        let dotted = format!("a.{}", "b".repeat(n - 2));
        let unique = format!(":1.{}", "2".repeat(n - 3));
        for k in kinds {
            inputs.push((k, dotted.clone()));
            inputs.push((k, unique.clone()));
            inputs.push((k, "m".repeat(n)));
            inputs.push((k, format!("/{}", "p".repeat(n))));
        }
    }
    assert_agree(&inputs);
}

#[test]
fn messages_agree_with_libdbus() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/libdbus_messages.hex");
    let text = std::fs::read_to_string(&path).expect("tests/data/libdbus_messages.hex");
    let inputs: Vec<(&str, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| ("msg", l.to_string()))
        .collect();
    let valid = inputs.iter().filter(|(k, s)| ours(k, s)).count();
    // Both verdicts must be well represented, or the comparison says little.
    assert!(
        inputs.len() > 400 && valid > 30,
        "{valid} of {}",
        inputs.len()
    );
    assert_agree(&inputs);
}
