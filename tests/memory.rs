//! Memory after a flood (issue 11): once a flood of small signals to a subscriber that did
//! not read has drained and the bus's idle sweep has run, the bus gives the memory back.

mod common;

use common::*;
use std::time::Duration;

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[test]
fn memory_returns_after_a_flood_drains() {
    if is_reference_daemon() {
        return skip(
            "memory_returns_after_a_flood_drains",
            "sluicebus's idle sweep",
        );
    }
    // The default max_outgoing_bytes (127 MiB) holds the whole flood (about 80 MB as
    // charged): nobody is disconnected, the queue drains by reading.
    let bus = TestBus::start();
    let pid = bus.pid();
    let mut sub = bus.client();
    sub.add_match("type='signal',interface='org.example.Flood'");
    let mut flooder = bus.client();
    let idle = status_kib(pid, "VmRSS:");

    const N: usize = 200_000;
    const BATCH: usize = 1000;
    let payload = "z".repeat(32);
    let args = [s(&payload)];
    let mut sent = 0;
    while sent < N {
        let mut bytes = Vec::new();
        for _ in 0..BATCH.min(N - sent) {
            let serial = flooder.next_serial();
            bytes.extend(build_message(&MsgSpec {
                msg_type: msg_type::SIGNAL,
                serial,
                path: Some("/flood"),
                interface: Some("org.example.Flood"),
                member: Some("Tick"),
                args: &args,
                ..MsgSpec::default()
            }));
            sent += 1;
        }
        flooder.send_bytes(&bytes).expect("flood");
    }
    // Everything the bus read is queued for `sub` once this round trip returns.
    flooder.driver("GetId", &[]).expect_return();
    let peak = status_kib(pid, "VmHWM:");
    assert!(
        peak > idle + 32 * 1024,
        "the flood did not grow the bus (idle {idle} KiB, peak {peak} KiB)"
    );

    // The subscriber reads everything, up to the reply to a call made after the flood.
    let serial = sub.call(Some(DBUS), DBUS_PATH, Some(DBUS), "GetId", &[]);
    let mut ticks = 0;
    loop {
        let m = sub
            .recv(TIMEOUT)
            .expect("the subscriber's queue drains within TIMEOUT");
        if m.reply_serial == Some(serial) {
            break;
        }
        ticks += usize::from(m.member.as_deref() == Some("Tick"));
    }
    assert_eq!(ticks, N, "signals lost");

    // The sweep runs 2 s after the queues emptied: a deadline well beyond it, polled
    // (waiting for the process's memory, which is outside the bus's message order).
    let bound = idle + 16 * 1024;
    let mut now = 0;
    let back = eventually(Duration::from_secs(30), || {
        now = status_kib(pid, "VmRSS:");
        now <= bound
    });
    assert!(
        back,
        "VmRSS {now} KiB after the flood drained (idle {idle} KiB, peak {peak} KiB)"
    );
    // Still serving.
    flooder.driver("GetId", &[]).expect_return();
}
