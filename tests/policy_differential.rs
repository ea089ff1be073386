//! Policy side by side with dbus-daemon: one default-context policy at a time, added after
//! an allow-everything one (later rules win), on sluicebus and on the reference
//! dbus-daemon, and the same scenario played on each: calls to a service by name through two
//! interfaces, its reply, a broadcast and a unicast signal, an unrequested error, and two
//! RequestName calls. What each client received (common::peers) and the RequestName
//! outcomes must be the same on both buses, apart from the rule counts in AccessDenied texts
//! and one deliberate difference ([`DELIBERATE`]).

mod common;

use common::peers::Peers;
use common::*;

fn policies() -> Vec<&'static str> {
    vec![
        r#"<deny send_destination="com.example.B"/>"#,
        r#"<deny send_destination_prefix="com.example"/>"#,
        r#"<deny send_interface="com.example.I"/>"#,
        r#"<deny send_interface="com.example.I" send_member="M"/>"#,
        r#"<deny send_path="/p" send_member="M"/>"#,
        r#"<deny send_path="/p"/>"#,
        r#"<deny send_type="method_call"/>"#,
        r#"<deny send_type="signal"/>"#,
        r#"<deny send_type="method_return"/>"#,
        r#"<deny send_type="error"/>"#,
        r#"<deny send_error="com.example.Error.Nope"/>"#,
        r#"<deny send_broadcast="true"/>"#,
        r#"<deny send_destination="com.example.B" send_interface="com.example.I"/>"#,
        r#"<deny send_interface="com.example.I"/><allow send_path="/p" send_member="M"/>"#,
        r#"<deny send_requested_reply="false" send_type="method_return"/>"#,
        r#"<deny receive_interface="com.example.I"/>"#,
        r#"<deny receive_interface="com.example.I" receive_member="S"/>"#,
        r#"<deny receive_type="signal"/>"#,
        r#"<deny receive_type="method_call"/>"#,
        r#"<deny receive_sender="com.example.A"/>"#,
        r#"<deny receive_path="/q"/>"#,
        // (Without receive_sender it would refuse the driver's reply to Hello too, on both
        // buses, and no client could connect.)
        r#"<deny receive_requested_reply="true" receive_type="method_return" receive_sender="com.example.B"/>"#,
        r#"<deny own="com.example.X"/>"#,
        r#"<deny own_prefix="com.example"/><allow own="com.example.B"/>"#,
        r#"<deny own="*"/><allow own="com.example.B"/><allow own="com.example.A"/>"#,
        r#"<deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="RequestName"/>"#,
        r#"<deny send_destination="*"/>"#,
        r#"<deny receive_interface="com.example.I"/><allow eavesdrop="true"/>"#,
        r#"<deny send_interface="com.example.I"/><allow send_interface="*" eavesdrop="true"/>"#,
        r#"<deny send_interface="com.example.I"/><allow send_requested_reply="true"/>"#,
        r#"<deny receive_type="signal"/><allow receive_requested_reply="false"/>"#,
    ]
}

/// The one policy decided differently on purpose: dbus-daemon's rule optimiser ignores
/// `send_broadcast` and so treats this rule as one that matches every message.
const DELIBERATE: &str = r#"<deny send_broadcast="true"/>"#;

/// `text` with the "N matched rules" of AccessDenied texts made "matched rules": dbus-daemon
/// counts after dropping every rule a later catch-all rule of the same kind overrides,
/// sluicebus counts every rule that matched.
fn without_rule_counts(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(" matched rules") {
        let head = rest[..i].trim_end_matches(|c: char| c.is_ascii_digit());
        out.push_str(head);
        out.push_str(" matched rules");
        rest = &rest[i + " matched rules".len()..];
    }
    out + rest
}

/// The scenario on a bus with `policy` added; what every client saw.
fn play(daemon: &std::path::Path, policy: &str) -> String {
    let extra = format!(r#"<policy context="default">{policy}</policy>"#);
    let bus = TestBus::with_daemon(daemon, &session_config(&extra));
    let mut p = match Peers::try_new(&bus) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let a = p.a.unique().to_string();
    let mut out = String::new();
    let own =
        p.a.driver("RequestName", &[s("com.example.A"), Arg::U32(0)]);
    out += &format!(
        "a owns com.example.A: {:?} {:?}\n",
        own.error_name, own.args
    );
    p.c.add_match("member='S'");
    let serial = Peers::call(&mut p.a, "com.example.B", 0);
    Peers::reply(&mut p.b, &a, serial, false);
    p.a.send(MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        path: Some("/q"),
        interface: Some("com.example.J"),
        member: Some("N"),
        destination: Some("com.example.B"),
        ..Default::default()
    });
    p.a.barrier();
    Peers::signal(&mut p.a, None, "S");
    Peers::signal(&mut p.a, Some("com.example.B"), "S");
    let b = p.b.unique().to_string();
    Peers::reply(&mut p.a, &b, 4242, true);
    for name in ["com.example.X", "org.example.Y"] {
        let r = p.a.driver("RequestName", &[s(name), Arg::U32(0)]);
        out += &format!("a owns {name}: {:?} {:?}\n", r.error_name, r.args);
    }
    out + &p.transcript()
}

#[test]
fn policies_decide_as_dbus_daemon_decides() {
    let reference = reference_daemon();
    let mut table = SideBySide::new("policies", "POLICY_DIFFERENTIAL_TABLE");
    for policy in policies() {
        let x = without_rule_counts(&play(&daemon_path(), policy));
        if policy == DELIBERATE {
            // dbus-daemon takes this rule for a catch-all and drops every earlier send
            // rule, so nothing at all may be sent there; sluicebus applies it as written:
            // broadcasts refused, the rest as before.
            assert!(
                !x.contains("c <- signal S")
                    && x.contains("b <- signal S /p from a to com.example.B"),
                "{x}"
            );
            continue;
        }
        table.check(policy, &x, &without_rule_counts(&play(&reference, policy)));
    }
    table.finish();
}
