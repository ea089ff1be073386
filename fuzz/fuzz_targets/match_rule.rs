//! Match rule text parsing and the canonical form.
//!
//! Properties checked: nothing panics; the canonical form of a parsed rule (when within the
//! length limit) parses again to an equal rule (GetAllMatchRules output must be usable with RemoveMatch) and is a fixed
//! point; `matches` can be evaluated against a few messages without panicking, and equal
//! rules give equal verdicts.
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use sluicebus::bus::match_rule::{MatchError, MatchRule, MAX_RULE_LEN};
use sluicebus::wire::marshal::{BodyWriter, MessageBuilder};
use sluicebus::wire::message::Message;

thread_local! {
    static MESSAGES: Vec<Message> = messages();
}

fn messages() -> Vec<Message> {
    let mut out = Vec::new();
    let mut b = BodyWriter::new();
    b.str("org.example.Name").str("").str(":1.7");
    out.push(
        MessageBuilder::signal(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameOwnerChanged",
        )
        .build(1, &b),
    );
    let mut b = BodyWriter::new();
    b.object_path("/a/b/").str("/a/b/c").u32(3).str("it's");
    out.push(
        MessageBuilder::method_call("/org/example", Some("org.example.I"), "M")
            .destination(":1.5")
            .build(2, &b),
    );
    out.into_iter()
        .filter_map(|m| Message::parse(Rc::from(m.as_slice()), 0).ok())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rule) = MatchRule::parse(text) else {
        return;
    };
    let canon = rule.canonical();
    if canon.len() > MAX_RULE_LEN {
        // Known and reported (fuzz/README.md): quoting can push the canonical form of an
        // accepted rule past the length limit, e.g. a 1024-byte `arg0=aaa…` (no quotes).
        assert_eq!(MatchRule::parse(&canon), Err(MatchError::TooLong));
        return;
    }
    let again = match MatchRule::parse(&canon) {
        Ok(r) => r,
        Err(e) => {
            panic!("canonical form does not parse: {e:?}\ninput {text:?}\ncanonical {canon:?}")
        }
    };
    assert_eq!(again, rule, "input {text:?}\ncanonical {canon:?}");
    assert_eq!(again.canonical(), canon);
    MESSAGES.with(|ms| {
        for m in ms {
            let sender_is = |v: &str| v == ":1.7" || v == "org.freedesktop.DBus";
            let dest_is = |v: &str| v == ":1.5";
            assert_eq!(
                rule.matches(m, sender_is, dest_is),
                again.matches(m, sender_is, dest_is)
            );
        }
    });
});
