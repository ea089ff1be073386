//! Configuration files side by side with dbus-daemon: busconfig documents with unknown,
//! misplaced and malformed elements, attributes, limits, policies, includes and directories,
//! given to sluicebus and to the reference dbus-daemon; each must start on both or be
//! refused by both. Nothing is waited for beyond the first line a daemon prints (its address)
//! or its exit.

mod common;

use common::*;
use std::path::Path;

const HEAD: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
"#;

/// The body of a `<busconfig>` with the usual session basics plus `extra`.
fn doc(extra: &str) -> String {
    format!(
        "{HEAD}<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen>\
         <auth>EXTERNAL</auth>{SESSION_POLICY}{extra}</busconfig>\n"
    )
}

fn configs() -> Vec<(&'static str, String)> {
    let d = |x: &str| doc(x);
    vec![
        ("the basics", d("")),
        ("unknown element", d("<foo/>")),
        ("unknown element with text", d("<foo>bar</foo>")),
        (
            "unknown attribute on a rule",
            d(r#"<policy context="default"><allow foo="bar"/></policy>"#),
        ),
        (
            "unknown attribute on policy",
            d(r#"<policy foo="bar"><allow own="*"/></policy>"#),
        ),
        (
            "unknown limit",
            d(r#"<limit name="max_nonsense">1</limit>"#),
        ),
        (
            "negative limit",
            d(r#"<limit name="max_message_size">-1</limit>"#),
        ),
        (
            "non-numeric limit",
            d(r#"<limit name="max_message_size">abc</limit>"#),
        ),
        (
            "huge limit",
            d(r#"<limit name="max_message_size">99999999999999999999</limit>"#),
        ),
        ("limit without name", d("<limit>5</limit>")),
        (
            "zero auth_timeout",
            d(r#"<limit name="auth_timeout">0</limit>"#),
        ),
        (
            "bogus policy context",
            d(r#"<policy context="bogus"><allow own="*"/></policy>"#),
        ),
        (
            "two policy selectors",
            d(r#"<policy context="default" user="root"><allow own="*"/></policy>"#),
        ),
        (
            "policy for an unknown user",
            d(r#"<policy user="nosuchuser-sluicebus"><allow own="*"/></policy>"#),
        ),
        (
            "policy for an unknown group",
            d(r#"<policy group="nosuchgroup-sluicebus"><allow own="*"/></policy>"#),
        ),
        (
            "at_console policy",
            d(r#"<policy at_console="true"><allow own="*"/></policy>"#),
        ),
        (
            "bad message type",
            d(r#"<policy context="default"><allow send_type="bogus"/></policy>"#),
        ),
        (
            "own with user",
            d(r#"<policy context="default"><deny own="*" user="root"/></policy>"#),
        ),
        (
            "destination and prefix",
            d(
                r#"<policy context="default"><allow send_destination="a.b" send_destination_prefix="a"/></policy>"#,
            ),
        ),
        (
            "send and receive mixed",
            d(
                r#"<policy context="default"><allow send_interface="a.b" receive_interface="a.b"/></policy>"#,
            ),
        ),
        (
            "bad eavesdrop value",
            d(r#"<policy context="default"><allow eavesdrop="maybe"/></policy>"#),
        ),
        (
            "bad send_broadcast value",
            d(r#"<policy context="default"><allow send_broadcast="maybe"/></policy>"#),
        ),
        (
            "broadcast with a destination",
            d(
                r#"<policy context="default"><allow send_broadcast="true" send_destination="a.b"/></policy>"#,
            ),
        ),
        (
            "rule without attributes",
            d(r#"<policy context="default"><allow/></policy>"#),
        ),
        (
            "max_fds out of range",
            d(
                r#"<policy context="default"><allow send_interface="a.b" max_fds="100000"/></policy>"#,
            ),
        ),
        (
            "missing include",
            d("<include>/nonexistent/sluicebus.conf</include>"),
        ),
        (
            "missing include, ignored",
            d(r#"<include ignore_missing="yes">/nonexistent/sluicebus.conf</include>"#),
        ),
        (
            "missing includedir",
            d("<includedir>/nonexistent/sluicebus.d</includedir>"),
        ),
        (
            "missing servicedir",
            d("<servicedir>/nonexistent/sluicebus-services</servicedir>"),
        ),
        ("odd bus type", d("<type>weird</type>")),
        ("unknown auth mechanism", d("<auth>FOO</auth>")),
        (
            "misc flags",
            d("<syslog/><keep_umask/><allow_anonymous/><fork/>"),
        ),
        ("text at top level", d("some text")),
        ("nested busconfig", d("<busconfig/>")),
        ("apparmor element", d(r#"<apparmor mode="enabled"/>"#)),
        ("apparmor bad mode", d(r#"<apparmor mode="sometimes"/>"#)),
        (
            "selinux associate",
            d(r#"<selinux><associate own="a.b" context="x_t"/></selinux>"#),
        ),
        (
            "standard dirs with text",
            d("<standard_session_servicedirs>x</standard_session_servicedirs>"),
        ),
        (
            "servicehelper",
            d("<servicehelper>/nonexistent/helper</servicehelper>"),
        ),
        (
            "no doctype",
            "<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen></busconfig>\n".into(),
        ),
        ("empty file", String::new()),
        ("not XML", "this is not xml\n".into()),
        (
            "unclosed element",
            format!("{HEAD}<busconfig><type>session</type>"),
        ),
        ("wrong root", format!("{HEAD}<notbusconfig/>")),
    ]
}

/// Whether `daemon` starts with the configuration `text` (it prints its address) or refuses
/// it (it exits first).
fn starts(daemon: &Path, text: &str) -> bool {
    TestBus::try_with_daemon(daemon, text).is_ok()
}

#[test]
fn configurations_are_taken_or_refused_as_dbus_daemon_does() {
    let reference = reference_daemon();
    let mut diffs = Vec::new();
    let mut refused = 0;
    let all = configs();
    for (title, text) in &all {
        let x = starts(&daemon_path(), text);
        let y = starts(&reference, text);
        refused += usize::from(!y);
        if x != y {
            diffs.push(format!(
                "{title}: sluicebus {}, dbus-daemon {}\n{text}",
                if x { "starts" } else { "refuses" },
                if y { "starts" } else { "refuses" }
            ));
        }
    }
    // Both outcomes must be well represented, or the comparison says little.
    assert!(
        refused > 10 && all.len() - refused > 10,
        "{refused} of {} refused",
        all.len()
    );
    assert!(
        diffs.is_empty(),
        "{} configurations differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
