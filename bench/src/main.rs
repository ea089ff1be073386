//! sluicebus-bench: latency benchmarks for any D-Bus message bus.
//!
//! Speaks the wire protocol directly on unix sockets (see `wire.rs`), so the same client code
//! measures sluicebus, dbus-daemon, dbus-broker and busd. See bench/README.md for usage and
//! results.

mod client;
mod compare;
mod filtered;
mod flood;
mod flood_compare;
mod more;
mod partial;
mod pin;
mod relay;
mod scenarios;
mod soak;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use scenarios::{Common, FanoutParams};

const USAGE: &str = "\
usage: sluicebus-bench [--version] [--address ADDR] [--count N] [--warmup N] [--payload BYTES] [--json] [--quiet]
                       [--pin CPU] [--poll-wait] SCENARIO [OPTIONS]

scenarios:
  fanout  [--subscribers K] [--rules R] [--rules-per-conn M]
          one emitter, K subscribers matching type='signal',interface='org.bench.Sig',member='Tick',
          R non-matching rules (path='/org/bench/FooN') spread over connections of M rules each;
          latency = emit until all K subscribers have the signal
  rtt     method call round trip: client -> bus -> echo service -> bus -> client
  pipelined [--pairs N] [--inflight M]
          N client/echo pairs, each client keeping M calls in flight (--count is the total);
          calls/s and forwarded messages/s (2 per call)
  large   [--size BYTES]   round trip with an `ay` body of BYTES; payload bytes/s (both ways)
  connect connect + AUTH EXTERNAL + Hello + disconnect, one after another
  flood   [--signals N] [--interval-us U] [--bursts K] [--min-samples S] [--gap-ms G]
          [--calls-log FILE]
          a flooder emits N signals (default 200000) to a subscriber reading 4 KiB/ms while a
          bystander calls an echo service, one call due every U µs (default 1000; latency from
          when it was due): bystander p50/p99 idle (--count calls) and during the flood
          (messages/s: the flood's signals/s; samples: calls during floods). The flood is made
          K times (default 1), and more (at most 100) until S calls fell during floods, G ms
          apart (default 2500; fresh subscriber and flooder each time); --calls-log writes each
          call during a flood: flood number, due time (CLOCK_MONOTONIC ns), latency ns
  memory-flood --pid P [--signals N] [--kind signals|calls] [--then read|disconnect] [--settle-s S]
          [--hold-s H] [--no-traffic]
          N small signals (default 2000000, --payload bytes each) to a subscriber that does not
          read, then reads them all (or disconnects): the bus's VmRSS idle, its peak (VmHWM) and
          S seconds (default 5) after the queue drained (--kind calls: N method calls expecting
          no reply, to a service that does not read; --hold-s: the receiver waits H s, the bus at
          rest, before it reads or leaves; --no-traffic: no round trip by a third client after)
  memory-partial --pid P [--conns N] [--size BYTES] [--settle-s S]
          N connections (default 50) each send all but 8 bytes of one BYTES message (default
          32 MiB): the bus's VmRSS before, its peak (VmHWM), the connections it stopped taking
          bytes from (hung up, or reads paused), and VmRSS S s after they all closed
  flood-compare [--buses a,b,c] [--flood-signals 200000,2000000] [--rounds 3] [--interval-us U]
          [--sluicebus PATH] [--dbus-daemon PATH] [--config FILE] [--min-samples S] [--bursts K]
          [--gap-ms G]
          flood on every bus as compare starts them, rounds interleaved: bystander p50/p99 idle
          (--count calls, default 1000) and during each flood size (floods repeated until at
          least S calls, default 1000, fell during floods: see flood), during/idle ratios, verdict
  fdpass  round trip of a call carrying one unix fd, which the echo service sends back
  memory  --pid P[,P...] [--conns 1000] [--match-rules 10000]
          VmRSS of the bus process(es) idle, with idle connections, and with match rules
  serve   --buses NAME   start one bus as compare does, print \"PID ADDRESS\", run until stdin EOF
  baseline  the rtt echo over a socketpair between two threads, no bus (--address unused)
  relay   the rtt echo through a do-nothing relay process (epoll_wait, read, write per hop),
          no bus (--address unused): the floor for a bus, which is a process of its own
  filtered [--rules N] [--subscribers K] [--rounds R] [--per-instance M]
          [--only direct|unfiltered|filtered]
          Containers1 Allow filtering: rtt and fanout (K subscribers, default 10) directly, through
          unfiltered instances and through instances filtered by N rules (default 1000), interleaved
          over R rounds (default 20) of --count each (default 2000); medians and
          filtered/unfiltered, filtered/direct ratios.
          At most M connections per instance (default 8, the usual max_connections_per_container);
          --only measures one path (for instructions.sh).
          Needs Containers1 with Allow (sluicebus); other buses: \"not supported\", exit 1
  compare [--sluicebus PATH] [--dbus-daemon PATH] [--busd PATH] [--buses a,b,c] [--config FILE]
          [--rounds N] [--rules 10,1000,10000] [--subscribers 1,10] [--pairs 1,4,16]
          [--inflight 32] [--size 4096,65536,1048576] [--conns 1000] [--match-rules 10000]
          [--svg FILE] [--filter-rules N] [--pin-bus CPU]
          start each bus privately; memory first, then per round fanout for every (K, R), the
          socketpair baseline, the relay, and per bus rtt, pipelined, large, connect, fdpass,
          filtered (N rules, default 1000, 0 skips; K = the largest --subscribers); print
          Markdown medians with sluicebus/other ratios (--conns 0 skips memory); buses default
          to sluicebus,dbus-daemon,dbus-broker,busd (dbus-broker and busd are skipped when they
          will not start; busd is looked up on PATH, then $CARGO_HOME/bin, ~/.cargo/bin)

--address defaults to $DBUS_SESSION_BUS_ADDRESS; --count 10000 (compare, filtered: 2000);
--warmup defaults to count/10 (at least 100); progress goes to stderr unless --quiet.
--pin CPU runs the bench's threads (client, echo service, ...) on that CPU only; --pin-bus CPU
(compare, serve) starts the bus under test pinned to that CPU (for dbus-broker: launcher and
broker). Give both the same CPU for the one-CPU round trip.
--poll-wait makes every client wait in poll(POLLIN) before reading, as libdbus, GDBus and sd-bus
do, instead of blocking in read (which the kernel also wakes when the bus reads what the client
sent: two spurious wake-ups per round trip, on every bus).
";

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag}: not a number: {s:?}"))
}

fn list(s: &str, flag: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(|x| number(x.trim(), flag)).collect()
}

fn run(args: &[String]) -> Result<(), String> {
    // `soak` parses its own options (soak.rs); the global ones come before its name.
    if let Some(at) = args.iter().position(|a| a == "soak") {
        return soak::run_cli(&args[..at], &args[at + 1..]);
    }
    let mut address = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok();
    let mut count = None;
    let mut warmup = None;
    let mut payload = 0usize;
    let mut json = false;
    let mut quiet = false;
    let mut scenario = None;
    let mut subscribers = None;
    let mut rules = None;
    let mut rules_per_conn = 1000usize;
    let mut pairs = 1usize;
    let mut inflight = 32usize;
    let mut size = 65536usize;
    let mut pids: Vec<usize> = Vec::new();
    let mut n_conns = 1000usize;
    let mut n_rules = 10_000usize;
    let mut rounds = None;
    let mut per_instance = filtered::PER_INSTANCE;
    let mut only = None;
    let mut signals = 200_000u64;
    let mut signals_given = None;
    let mut then = flood::Then::Read;
    let mut kind = flood::Kind::Signals;
    let mut hold_s = 0f64;
    let mut flood_sizes = vec![200_000u64, 2_000_000];
    let mut traffic_after = true;
    let mut settle_s = 5u64;
    let mut conns_given = None;
    let mut interval_us = 1000u64;
    let mut bursts = 1u32;
    let mut min_samples = None;
    let mut gap_ms = 2500u64;
    let mut calls_log = None;
    let mut compare = compare::CompareOpts {
        sluicebus: PathBuf::from("target/release/sluicebus"),
        dbus_daemon: PathBuf::from("/usr/bin/dbus-daemon"),
        busd: None,
        buses: ["sluicebus", "dbus-daemon", "dbus-broker", "busd"]
            .map(String::from)
            .to_vec(),
        config: PathBuf::from("/usr/share/dbus-1/session.conf"),
        rounds: 5,
        rules: vec![10, 1000, 10000],
        subscribers: vec![1, 10],
        count: 2000,
        warmup: 200,
        progress: true,
        pairs: vec![1, 4, 16],
        inflight: 32,
        sizes: vec![4096, 65536, 1 << 20],
        mem_conns: 1000,
        mem_rules: 10_000,
        svg: None,
        filter_rules: 1000,
        pin: None,
        pin_bus: None,
    };
    let mut pin = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--version" => {
                println!("sluicebus-bench {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            "--address" => address = Some(value(args, &mut i, a)?.to_owned()),
            "--count" => count = Some(number::<u64>(value(args, &mut i, a)?, a)?),
            "--warmup" => warmup = Some(number::<u64>(value(args, &mut i, a)?, a)?),
            "--payload" => payload = number(value(args, &mut i, a)?, a)?,
            "--json" => json = true,
            "--quiet" => quiet = true,
            "--subscribers" => subscribers = Some(list(value(args, &mut i, a)?, a)?),
            "--rules" => rules = Some(list(value(args, &mut i, a)?, a)?),
            "--rules-per-conn" => rules_per_conn = number(value(args, &mut i, a)?, a)?,
            "--pairs" => {
                let v = list(value(args, &mut i, a)?, a)?;
                pairs = *v.first().ok_or("--pairs: empty")?;
                compare.pairs = v;
            }
            "--svg" => compare.svg = Some(value(args, &mut i, a)?.into()),
            "--inflight" => {
                inflight = number(value(args, &mut i, a)?, a)?;
                compare.inflight = inflight;
            }
            "--size" => {
                let v = list(value(args, &mut i, a)?, a)?;
                size = *v.first().ok_or("--size: empty")?;
                compare.sizes = v;
            }
            "--pid" => pids = list(value(args, &mut i, a)?, a)?,
            "--conns" => {
                n_conns = number(value(args, &mut i, a)?, a)?;
                compare.mem_conns = n_conns;
                conns_given = Some(n_conns);
            }
            "--match-rules" => {
                n_rules = number(value(args, &mut i, a)?, a)?;
                compare.mem_rules = n_rules;
            }
            "--sluicebus" => compare.sluicebus = value(args, &mut i, a)?.into(),
            "--dbus-daemon" => compare.dbus_daemon = value(args, &mut i, a)?.into(),
            "--busd" => compare.busd = Some(value(args, &mut i, a)?.into()),
            "--config" => compare.config = value(args, &mut i, a)?.into(),
            "--rounds" => {
                compare.rounds = number(value(args, &mut i, a)?, a)?;
                rounds = Some(compare.rounds);
            }
            "--only" => {
                let v = value(args, &mut i, a)?;
                only = Some(filtered::path_index(v).ok_or_else(|| {
                    format!("--only: {v:?} is not direct, unfiltered or filtered")
                })?);
            }
            "--signals" => {
                signals = number(value(args, &mut i, a)?, a)?;
                signals_given = Some(signals);
            }
            "--then" => {
                then = match value(args, &mut i, a)? {
                    "read" => flood::Then::Read,
                    "disconnect" => flood::Then::Disconnect,
                    v => return Err(format!("--then takes read or disconnect, not {v:?}")),
                }
            }
            "--kind" => {
                kind = match value(args, &mut i, a)? {
                    "signals" => flood::Kind::Signals,
                    "calls" => flood::Kind::Calls,
                    v => return Err(format!("--kind takes signals or calls, not {v:?}")),
                }
            }
            "--flood-signals" => {
                flood_sizes = list(value(args, &mut i, a)?, a)?
                    .into_iter()
                    .map(|n| n as u64)
                    .collect()
            }
            "--hold-s" => hold_s = number(value(args, &mut i, a)?, a)?,
            "--no-traffic" => traffic_after = false,
            "--settle-s" => settle_s = number(value(args, &mut i, a)?, a)?,
            "--interval-us" => interval_us = number(value(args, &mut i, a)?, a)?,
            "--bursts" => bursts = number(value(args, &mut i, a)?, a)?,
            "--min-samples" => min_samples = Some(number::<u64>(value(args, &mut i, a)?, a)?),
            "--gap-ms" => gap_ms = number(value(args, &mut i, a)?, a)?,
            "--calls-log" => calls_log = Some(PathBuf::from(value(args, &mut i, a)?)),
            "--per-instance" => per_instance = number(value(args, &mut i, a)?, a)?,
            "--poll-wait" => client::set_poll_wait(true),
            "--pin" => pin = Some(number::<usize>(value(args, &mut i, a)?, a)?),
            "--pin-bus" => compare.pin_bus = Some(number::<usize>(value(args, &mut i, a)?, a)?),
            "--filter-rules" => compare.filter_rules = number(value(args, &mut i, a)?, a)?,
            "--buses" => {
                compare.buses = value(args, &mut i, a)?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "fanout" | "rtt" | "compare" | "pipelined" | "large" | "connect" | "fdpass"
            | "memory" | "baseline" | "relay" | "serve" | "filtered" | "flood" | "memory-flood"
            | "flood-compare" | "memory-partial"
                if scenario.is_none() =>
            {
                scenario = Some(a.to_owned())
            }
            _ => return Err(format!("unexpected argument {a:?}\n\n{USAGE}")),
        }
        i += 1;
    }
    let scenario = scenario.ok_or_else(|| format!("no scenario given\n\n{USAGE}"))?;
    let single = |v: Option<Vec<usize>>, flag: &str, default: usize| -> Result<usize, String> {
        match v.as_deref() {
            None => Ok(default),
            Some([x]) => Ok(*x),
            Some(_) => Err(format!("{flag} takes one number for this scenario")),
        }
    };
    if scenario == "compare" {
        // Pinned inside `compare` once the buses are started, so that they do not inherit it.
        compare.pin = pin;
    } else if let Some(cpu) = pin {
        // Every thread the scenario spawns inherits this (client, echo service, relay).
        pin::pin_current_thread(cpu).map_err(|e| e.to_string())?;
    }
    if scenario == "serve" {
        let name = compare.buses.first().cloned().unwrap_or_default();
        return compare::serve(&compare, &name).map_err(|e| e.to_string());
    }
    if scenario == "flood-compare" {
        compare.rounds = rounds.unwrap_or(3);
        compare.count = count.unwrap_or(1000);
        compare.warmup = warmup.unwrap_or(100);
        compare.progress = !quiet;
        let p = flood::FloodParams {
            bursts,
            min_samples: min_samples.unwrap_or(flood_compare::MIN_SAMPLES),
            gap: std::time::Duration::from_millis(gap_ms),
            ..flood::FloodParams::new(0, std::time::Duration::from_micros(interval_us))
        };
        let t = flood_compare::run(&compare, &flood_sizes, &p)
            .map_err(|e| format!("flood-compare: {e}"))?;
        print!("{t}");
        return Ok(());
    }
    if scenario == "compare" {
        if let Some(c) = count {
            compare.count = c;
        }
        compare.warmup = warmup.unwrap_or((compare.count / 10).max(100));
        if let Some(s) = subscribers {
            compare.subscribers = s;
        }
        if let Some(r) = rules {
            compare.rules = r;
        }
        compare.progress = !quiet;
        return compare::run(&compare).map_err(|e| e.to_string());
    }
    // filtered: many short rounds, so that the paths it compares meet the same machine noise.
    let count = count.unwrap_or(if scenario == "filtered" { 2000 } else { 10_000 });
    let address = if scenario == "baseline" || scenario == "relay" {
        address.unwrap_or_default()
    } else {
        address.ok_or("no --address and no DBUS_SESSION_BUS_ADDRESS")?
    };
    if scenario == "memory" {
        if pids.is_empty() {
            return Err("memory needs --pid (the bus process ids)".into());
        }
        let named: Vec<(u32, String)> = pids
            .iter()
            .map(|&p| {
                let name = std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| p.to_string());
                (p as u32, name)
            })
            .collect();
        let r = more::memory(&address, &named, n_conns, n_rules, !quiet)
            .map_err(|e| format!("memory: {e}"))?;
        print!("{}", r.table());
        return Ok(());
    }
    let common = Common {
        address,
        count,
        warmup: warmup.unwrap_or((count / 10).max(100)),
        payload,
        progress: !quiet,
    };
    if scenario == "filtered" {
        let p = filtered::FilterParams {
            rules: single(rules, "--rules", 1000)?,
            subscribers: single(subscribers, "--subscribers", 10)?,
            rounds: rounds.unwrap_or(20).max(1),
            per_instance,
            rotate: 0,
            only,
        };
        let r = filtered::filtered(&common, &p).map_err(|e| format!("filtered: {e}"))?;
        if json {
            println!("{}", r.json());
        } else {
            print!("{}", r.table());
        }
        return Ok(());
    }
    if scenario == "memory-partial" {
        let [pid] = pids[..] else {
            return Err("memory-partial needs --pid (the bus process id)".into());
        };
        let p = partial::PartialParams {
            conns: conns_given.unwrap_or(50),
            size: if size == 65536 { 32 << 20 } else { size },
            settle: std::time::Duration::from_secs(settle_s),
        };
        let r = partial::memory_partial(&common, pid as u32, &p)
            .map_err(|e| format!("memory-partial: {e}"))?;
        print!("{}", r.table());
        return Ok(());
    }
    if scenario == "memory-flood" {
        let [pid] = pids[..] else {
            return Err("memory-flood needs --pid (the bus process id)".into());
        };
        let p = flood::MemoryFloodParams {
            signals: signals_given.unwrap_or(2_000_000),
            kind,
            then,
            settle: std::time::Duration::from_secs(settle_s),
            hold: std::time::Duration::from_secs_f64(hold_s),
            traffic_after,
        };
        let r = flood::memory_flood(&common, pid as u32, &p)
            .map_err(|e| format!("memory-flood: {e}"))?;
        print!("{}", r.table());
        return Ok(());
    }
    if scenario == "flood" {
        let r = flood::flood(
            &common,
            &flood::FloodParams {
                bursts,
                min_samples: min_samples.unwrap_or(0),
                gap: std::time::Duration::from_millis(gap_ms),
                calls_log,
                ..flood::FloodParams::new(signals, std::time::Duration::from_micros(interval_us))
            },
        )
        .map_err(|e| format!("flood: {e}"))?;
        if json {
            println!("{}", r.flood.json());
        } else {
            print!("{}", r.table());
        }
        return Ok(());
    }
    let summary = if scenario == "fanout" {
        let p = FanoutParams {
            subscribers: single(subscribers, "--subscribers", 1)?,
            rules: single(rules, "--rules", 0)?,
            rules_per_conn,
        };
        scenarios::fanout(&common, &p)
    } else if scenario == "pipelined" {
        more::pipelined(&common, &more::PipelineParams { pairs, inflight })
    } else if scenario == "large" {
        more::large(&common, size)
    } else if scenario == "connect" {
        more::connect(&common)
    } else if scenario == "fdpass" {
        more::fdpass(&common)
    } else if scenario == "baseline" {
        more::baseline(&common).map(|(s, _)| s)
    } else if scenario == "relay" {
        relay::relay(&common).map(|(s, _)| s)
    } else {
        scenarios::rtt(&common)
    }
    .map_err(|e| format!("{scenario}: {e}"))?;
    scenarios::print(&summary, json).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden: `relay` re-runs this executable as its relay process (stdin <-> stdout).
    if args.first().map(String::as_str) == Some(relay::CHILD_ARG) {
        return match relay::child_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluicebus-bench {}: {e}", relay::CHILD_ARG);
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluicebus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
