//! Smoke test for `sluicebus-bench` (the separate package under bench/): builds it, runs
//! `fanout`, `rtt`, `filtered`, `flood`, `soak`, `flood-compare` and the others for a handful
//! of iterations (or seconds) against a private sluicebus and checks that the output is
//! well-formed. No timing assertions: this machine is far too noisy for them, and the
//! scaling claim is shown by `sluicebus-bench compare`, not by a test.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{lines_of, run_with_timeout, session_config, TempDir, TestBus};

/// Builds the bench binary once (debug profile, its own target dir) and returns its path.
fn bench_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("bench").join("target");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--manifest-path"])
            .arg(root.join("bench").join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo build for bench/");
        assert!(status.success(), "building sluicebus-bench failed");
        target.join("debug").join("sluicebus-bench")
    })
    .clone()
}

/// The numeric value of `"key":` in a flat JSON object.
fn json_num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// Checks the fields every summary has and that percentiles are ordered.
fn check_summary(json: &str, scenario: &str, samples: u64) {
    assert!(
        json.starts_with('{') && json.ends_with('}'),
        "not an object: {json}"
    );
    assert!(
        json.contains(&format!("\"scenario\":\"{scenario}\"")),
        "{json}"
    );
    assert!(json.contains("\"unit\":\"us\""), "{json}");
    assert_eq!(json_num(json, "samples"), samples as f64, "{json}");
    let p: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|k| json_num(json, k))
        .collect();
    assert!(p[0] > 0.0, "{json}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {json}"
    );
    assert!(json_num(json, "mean") > 0.0, "{json}");
    assert!(json_num(json, "iterations_per_sec") > 0.0, "{json}");
    assert!(json_num(json, "messages_per_sec") > 0.0, "{json}");
}

fn bench(bus: &TestBus, args: &[&str]) -> common::CmdOutput {
    let mut cmd = Command::new(bench_bin());
    cmd.arg("--address").arg(&bus.address).args(args);
    run_with_timeout(cmd, std::time::Duration::from_secs(60))
}

#[test]
fn fanout_json_is_well_formed() {
    let mut bus = TestBus::start();
    let out = bench(
        &bus,
        &[
            "--count",
            "20",
            "--warmup",
            "5",
            "--json",
            "fanout",
            "--subscribers",
            "3",
            "--rules",
            "50",
            "--rules-per-conn",
            "20",
        ],
    );
    let json = out.ok().trim();
    assert_eq!(json.lines().count(), 1, "{json}");
    check_summary(json, "fanout", 20);
    assert!(
        json.contains("\"params\":{\"subscribers\":3,\"rules\":50,\"payload\":0}"),
        "{json}"
    );
    // 20 signals to 3 subscribers each.
    let ratio = json_num(json, "messages_per_sec") / json_num(json, "iterations_per_sec");
    assert!((ratio - 3.0).abs() < 1e-3, "{json}");
    // Progress went to stderr, covering every idle-rule connection and the final iteration.
    assert!(
        out.stderr.contains("installed 50/50 idle rules"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("25/25"), "{}", out.stderr);
    bus.assert_alive();
}

#[test]
fn rtt_table_and_json_are_well_formed() {
    let bus = TestBus::start();
    let out = bench(
        &bus,
        &[
            "--count",
            "30",
            "--warmup",
            "3",
            "--payload",
            "100",
            "--quiet",
            "--json",
            "rtt",
        ],
    );
    let json = out.ok().trim();
    check_summary(json, "rtt", 30);
    assert!(json.contains("\"params\":{\"payload\":100}"), "{json}");
    assert!(
        out.stderr.is_empty(),
        "--quiet still printed: {}",
        out.stderr
    );

    let out = bench(&bus, &["--count", "10", "--quiet", "rtt"]);
    let table = out.ok();
    for row in [
        "samples",
        "p50",
        "p90",
        "p99 ",
        "p99.9",
        "max",
        "mean",
        "iterations/s",
        "messages/s",
    ] {
        assert!(table.contains(row), "no {row:?} row in:\n{table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["samples", "10"]),
        "{table}"
    );
}

#[test]
fn bad_arguments_fail_cleanly() {
    let bus = TestBus::start();
    let out = bench(&bus, &["--count", "x", "rtt"]);
    assert!(!out.success());
    assert!(out.stderr.contains("not a number"), "{}", out.stderr);
    let out = bench(&bus, &["nosuch"]);
    assert!(!out.success());
    let mut cmd = Command::new(bench_bin());
    cmd.args(["--address", "unix:path=/nonexistent/bus", "rtt"]);
    let out = run_with_timeout(cmd, std::time::Duration::from_secs(20));
    assert!(!out.success());
    assert!(out.stderr.contains("rtt:"), "{}", out.stderr);
    let mut cmd = Command::new(bench_bin());
    cmd.arg("--version");
    let out = run_with_timeout(cmd, std::time::Duration::from_secs(20));
    assert!(out.success());
    assert!(out.stdout.starts_with("sluicebus-bench "), "{}", out.stdout);
}

#[test]
fn throughput_size_connect_fd_baseline_and_relay_scenarios_are_well_formed() {
    let mut bus = TestBus::start();
    let base = ["--count", "40", "--warmup", "4", "--quiet", "--json"];
    let run = |extra: &[&str]| -> String {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        bench(&bus, &args).ok().trim().to_owned()
    };
    // 40 calls over 4 pairs of 10 each, 2 forwarded messages per call.
    let json = run(&["pipelined", "--pairs", "4", "--inflight", "8"]);
    check_summary(&json, "pipelined", 40);
    assert!(json.contains("\"pairs\":4,\"inflight\":8"), "{json}");
    let ratio = json_num(&json, "messages_per_sec") / json_num(&json, "iterations_per_sec");
    assert!((ratio - 2.0).abs() < 1e-3, "{json}");

    let json = run(&["large", "--size", "65536"]);
    check_summary(&json, "large", 40);
    let per_call = json_num(&json, "bytes_per_sec") / json_num(&json, "iterations_per_sec");
    // Relative: iterations_per_sec is printed with one decimal.
    assert!((per_call / 131072.0 - 1.0).abs() < 1e-3, "{json}");

    check_summary(&run(&["connect"]), "connect", 40);
    check_summary(&run(&["fdpass"]), "fdpass", 40);
    check_summary(&run(&["baseline"]), "baseline", 40);
    // The relay floor runs the bench's own binary as a separate relay process.
    check_summary(&run(&["relay"]), "relay", 40);
    bus.assert_alive();

    // memory reads any pid's VmRSS; the test process itself stands in for the bus here.
    let me = std::process::id().to_string();
    let out = bench(
        &bus,
        &[
            "--quiet",
            "memory",
            "--pid",
            &me,
            "--conns",
            "20",
            "--match-rules",
            "300",
        ],
    );
    let table = out.ok();
    assert!(
        table.contains("20 idle connections, 300 match rules"),
        "{table}"
    );
    assert!(table.contains("KiB per connection"), "{table}");
    bus.assert_alive();
}

#[test]
fn filtered_json_and_table_are_well_formed() {
    // Containers1 instances of a uid-0 bus listen in /run/dbus/containers.
    let mut bus = TestBus::for_containers("");
    let out = bench(
        &bus,
        &[
            "--count",
            "20",
            "--warmup",
            "3",
            "--json",
            "filtered",
            "--rules",
            "50",
            "--subscribers",
            "3",
            "--rounds",
            "2",
            "--per-instance",
            "2",
        ],
    );
    let json = out.ok().trim();
    assert_eq!(json.lines().count(), 1, "{json}");
    assert!(
        json.starts_with(
            "{\"scenario\":\"filtered\",\"params\":{\"rules\":50,\"subscribers\":3,\"rounds\":2,\"count\":20},\"unit\":\"us\","
        ),
        "{json}"
    );
    for measure in ["rtt_p50", "rtt_p99", "fanout_p50", "fanout_p99"] {
        for path in ["direct", "unfiltered", "filtered"] {
            assert!(json_num(json, &format!("{measure}_{path}")) > 0.0, "{json}");
        }
        for path in ["unfiltered", "direct"] {
            let r = json_num(json, &format!("{measure}_filtered_over_{path}"));
            assert!(r.is_finite() && r > 0.0, "{json}");
        }
    }
    // Progress: the instances (two filtered fanout instances of at most 2 connections for 3
    // subscribers) and every path of both rounds.
    assert!(
        out.stderr.contains("50 rules per filtered instance"),
        "{}",
        out.stderr
    );
    for path in ["direct", "unfiltered container", "filtered container"] {
        for what in ["rtt", "fanout K=3"] {
            let n = out
                .stderr
                .lines()
                .filter(|l| {
                    l.contains(&format!("] {what} "))
                        && l.contains(&format!(" {path} "))
                        && l.contains("p50")
                })
                .count();
            assert_eq!(n, 2, "{what} {path}:\n{}", out.stderr);
        }
    }

    let out = bench(
        &bus,
        &[
            "--count",
            "10",
            "--quiet",
            "filtered",
            "--rules",
            "5",
            "--subscribers",
            "2",
            "--rounds",
            "1",
        ],
    );
    let table = out.ok();
    assert!(table.contains("N=5 rules; 1 rounds"), "{table}");
    assert!(
        table.contains(
            "| measure [µs] | direct | unfiltered container | filtered container | filtered / unfiltered | filtered / direct |"
        ),
        "{table}"
    );
    for row in [
        "| rtt p50 |",
        "| rtt p99 |",
        "| fanout K=2 p50 |",
        "| fanout K=2 p99 |",
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} in:\n{table}"));
        // Three latencies and two ratios, all numbers.
        let cells: Vec<&str> = line.trim_matches('|').split('|').skip(1).collect();
        assert_eq!(cells.len(), 5, "{line}");
        for c in cells {
            assert!(c.trim().parse::<f64>().is_ok(), "{line}");
        }
    }
    assert!(
        table.contains("target filtered rtt p50 <= 1.10 x unfiltered: "),
        "{table}"
    );
    assert!(
        out.stderr.is_empty(),
        "--quiet still printed: {}",
        out.stderr
    );
    bus.assert_alive();
}

/// On a bus without Containers1 `Allow` (the reference dbus-daemon, when installed), `filtered`
/// says "not supported" and fails.
#[test]
fn filtered_on_a_bus_without_allow_is_not_supported() {
    let daemon = PathBuf::from("/usr/bin/dbus-daemon");
    if !daemon.exists() {
        eprintln!("skipped: no {}", daemon.display());
        return;
    }
    let dir = TempDir::new("bench-nofilter");
    let conf = dir.path().join("bus.conf");
    std::fs::write(&conf, session_config("")).expect("write config");
    let mut child = Command::new(&daemon)
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address"])
        .arg(format!(
            "--address=unix:path={}",
            dir.path().join("sock").display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start dbus-daemon");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    let address = lines
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("dbus-daemon printed no address");
    let mut cmd = Command::new(bench_bin());
    cmd.args(["--address", address.trim(), "--count", "5", "--quiet"])
        .args(["filtered", "--rules", "3", "--rounds", "1"]);
    let out = run_with_timeout(cmd, std::time::Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    assert!(!out.success(), "{out:#?}");
    assert!(
        out.stderr
            .starts_with("sluicebus-bench: filtered: not supported by this bus"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn flood_json_and_table_are_well_formed() {
    let mut bus = TestBus::start();
    let base = ["--count", "20", "--warmup", "2", "--quiet"];
    let args: Vec<&str> = base
        .iter()
        .chain(&["--json", "flood", "--signals", "3000"])
        .copied()
        .collect();
    let json = bench(&bus, &args).ok().trim().to_owned();
    assert!(json.contains("\"scenario\":\"flood\""), "{json}");
    assert!(
        json.contains(
            "\"params\":{\"signals\":3000,\"payload\":0,\"interval_us\":1000,\"idle_p50_ns\":"
        ),
        "{json}"
    );
    // The bystander's calls during the flood: at least one, however fast the flood went.
    assert!(json_num(&json, "samples") >= 1.0, "{json}");
    assert!(json_num(&json, "p50") > 0.0, "{json}");
    assert!(json_num(&json, "idle_p50_ns") > 0.0, "{json}");
    assert!(
        json_num(&json, "idle_p99_ns") >= json_num(&json, "idle_p50_ns"),
        "{json}"
    );
    assert!(json_num(&json, "messages_per_sec") > 0.0, "{json}");
    assert!(
        json.contains("\"bursts\":1}"),
        "one flood by default: {json}"
    );
    // Repeated floods: the calls of both count, at least one each.
    let args: Vec<&str> = base
        .iter()
        .chain(&["--json", "flood", "--signals", "1000"])
        .chain(&["--bursts", "2", "--gap-ms", "10"])
        .copied()
        .collect();
    let json = bench(&bus, &args).ok().trim().to_owned();
    assert!(json.contains("\"bursts\":2}"), "{json}");
    assert!(json_num(&json, "samples") >= 2.0, "{json}");
    let args: Vec<&str> = base
        .iter()
        .chain(&["flood", "--signals", "3000"])
        .copied()
        .collect();
    let table = bench(&bus, &args).ok().to_owned();
    assert!(table.contains("flood (idle) (signals=3000"), "{table}");
    assert!(table.contains("flood (during) (signals=3000"), "{table}");
    bus.assert_alive();
}

#[test]
fn memory_flood_table_is_well_formed() {
    let mut bus = TestBus::start();
    let pid = bus.pid().to_string();
    for then in ["read", "disconnect"] {
        let args = [
            "--quiet",
            "--pid",
            &pid,
            "memory-flood",
            "--signals",
            "3000",
            "--then",
            then,
            "--settle-s",
            "0",
        ];
        let table = bench(&bus, &args).ok().to_owned();
        let received = if then == "read" { "3000" } else { "0" };
        assert!(
            table.starts_with(&format!(
                "memory-flood: 3000 signals, {received} received by the subscriber\n"
            )),
            "{table}"
        );
        for row in ["VmRSS idle", "VmHWM peak", "VmRSS after"] {
            assert!(table.contains(row), "{table}");
        }
        // The same with no-reply method calls to a service that does not read.
        let calls: Vec<&str> = args.iter().copied().chain(["--kind", "calls"]).collect();
        let table = bench(&bus, &calls).ok().to_owned();
        assert!(
            table.starts_with(&format!(
                "memory-flood: 3000 no-reply calls, {received} received by the service\n"
            )),
            "{table}"
        );
    }
    bus.assert_alive();
}

#[test]
fn soak_table_and_svg_are_well_formed() {
    let mut bus = TestBus::start();
    let pid = bus.pid().to_string();
    let dir = TempDir::new("soak");
    let svg = dir.path().join("soak.svg");
    let args = [
        "--quiet",
        "soak",
        "--pid",
        &pid,
        "--seconds",
        "3",
        "--sample-s",
        "1",
        "--flood-burst",
        "2000",
        "--flood-every-s",
        "1",
        "--churn-per-s",
        "20",
        "--label",
        "smoke",
        "--svg",
        svg.to_str().expect("utf-8 path"),
    ];
    let table = bench(&bus, &args).ok().to_owned();
    assert!(
        table.starts_with("soak: smoke (calls,broadcast,fd,churn,slow,flood), VmRSS "),
        "{table}"
    );
    assert!(!table.contains("stopped early"), "{table}");
    // Data rows: t, VmRSS, VmHWM, fds, p50, p99, five rates, reconnects; all numbers.
    let rows: Vec<Vec<f64>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| t "))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| {
                    c.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("not a number in {l:?}"))
                })
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 3, "one row per second:\n{table}");
    for r in &rows {
        assert_eq!(r.len(), 12, "{table}");
        assert!(r[1] > 0.0 && r[2] >= r[1], "VmHWM >= VmRSS > 0:\n{table}");
        assert!(r[3] > 0.0, "the bus has fds open:\n{table}");
        assert!(
            r[4] > 0.0 && r[5] >= r[4],
            "bystander p99 >= p50 > 0:\n{table}"
        );
    }
    // Every actor did something during the run (calls, copies, fd calls, connects, flood).
    for (col, what) in (6..11).zip(["calls", "copies", "fd", "connects", "flood"]) {
        assert!(
            rows.iter().map(|r| r[col]).sum::<f64>() > 0.0,
            "no {what}:\n{table}"
        );
    }
    assert!(table.contains("summary smoke: VmRSS first "), "{table}");
    let svg = std::fs::read_to_string(&svg).expect("the plot was written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 5, "{svg}");

    // Only the named actors run; an unknown one is refused.
    let args = [
        "--quiet",
        "soak",
        "--pid",
        &pid,
        "--seconds",
        "1",
        "--sample-s",
        "1",
    ];
    let churn: Vec<&str> = args.iter().copied().chain(["--mix", "churn"]).collect();
    let table = bench(&bus, &churn).ok().to_owned();
    assert!(table.starts_with("soak: bus (churn), VmRSS "), "{table}");
    let bad: Vec<&str> = args.iter().copied().chain(["--mix", "churn,nap"]).collect();
    let out = bench(&bus, &bad);
    assert!(!out.success(), "unknown actor accepted");
    assert!(
        out.stderr.contains("unknown actor \"nap\""),
        "{}",
        out.stderr
    );
    bus.assert_alive();
}

#[test]
fn flood_compare_table_is_well_formed() {
    let dir = TempDir::new("flood-compare");
    let conf = dir.path().join("bus.conf");
    std::fs::write(&conf, session_config("")).expect("write config");
    let mut cmd = Command::new(bench_bin());
    cmd.args(["--quiet", "--count", "20", "--warmup", "2", "flood-compare"])
        .args(["--buses", "sluicebus", "--rounds", "2"])
        .args(["--flood-signals", "1000,3000"])
        // Two floods per run, not the default's 1000 calls during floods (minutes here).
        .args(["--bursts", "2", "--min-samples", "0", "--gap-ms", "10"])
        .arg("--sluicebus")
        .arg(common::daemon_path())
        .arg("--config")
        .arg(&conf);
    let out = run_with_timeout(cmd, std::time::Duration::from_secs(120));
    let table = out.ok().to_owned();
    assert!(table.starts_with("flood: bystander round trip"), "{table}");
    assert!(table.contains("(median of 2 rounds,"), "{table}");
    for size in ["1000", "3000"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| sluicebus | {size} |")))
            .unwrap_or_else(|| panic!("no row for {size}:\n{table}"));
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 13, "{row}");
        assert_eq!(cells[2], "2", "both rounds ran: {row}");
        assert_eq!(cells[3], "2", "two floods per run: {row}");
        assert!(
            cells[4].parse::<f64>().is_ok_and(|v| v >= 2.0),
            "samples: {row}"
        );
        for c in &cells[5..12] {
            assert!(c.parse::<f64>().is_ok_and(|v| v > 0.0), "{row}");
        }
        assert!(matches!(cells[12], "met" | "not met"), "{row}");
    }
}
