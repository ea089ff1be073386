//! `filtered`: what Containers1 per-instance filtering (the `Allow` named argument of
//! `AddServer`) costs a method call round trip and a signal fanout.
//!
//! One run creates Containers1 instances on the bus: an unfiltered one (AddServer without
//! `Allow`), one whose N `Allow` rules include the one that lets the echo call through, and for
//! the K fanout subscribers as many filtered instances (N rules including the one that lets the
//! emitter's signal in) and unfiltered ones as the per-instance connection limit requires
//! ([`FilterParams::per_instance`]). The echo service and the emitter stay outside, each
//! owning a well-known name (rules name well-known names only). Each round measures, in an
//! order rotated from round to round, the `rtt` loop from a client connected directly, through
//! the unfiltered instance and through the filtered one, then the `fanout` loop to K
//! subscribers connected the same three ways. The report gives the medians over rounds and the
//! medians of the per-round filtered/unfiltered and filtered/direct ratios.
//!
//! A bus without Containers1 or without `Allow` makes the run fail with
//! [`io::ErrorKind::Unsupported`] before anything is measured.

use std::io;
use std::thread;

use crate::client::{Conn, DBUS, DBUS_PATH};
use crate::scenarios::{
    self, fixed, median, Common, ECHO_INTERFACE, ECHO_MEMBER, ECHO_PATH, MATCHING_RULE,
    SIG_INTERFACE, SIG_MEMBER, SIG_PATH,
};
use crate::wire::{self, Header, Outgoing};

/// The Containers1 interface of the bus driver.
pub const CONTAINERS: &str = "org.freedesktop.DBus.Containers1";
/// Well-known name the echo service owns (the filtered client calls it by this name).
pub const ECHO_NAME: &str = "org.bench.Echo";
/// Well-known name the fanout emitter owns.
pub const EMITTER_NAME: &str = "org.bench.Emitter";
/// Container type given to AddServer.
const CONTAINER_TYPE: &str = "org.bench.Filtered";

/// `Allow` flag: the rule's bus name also covers its dot-separated descendants.
pub const BUS_NAME_IS_SUBTREE: u32 = 0x01;
/// `Allow` flag: the rule's object path also covers its descendants.
pub const OBJECT_PATH_IS_SUBTREE: u32 = 0x02;
/// `Allow` flag: method calls to the name are allowed.
pub const CALL_METHODS: u32 = 0x08;
/// `Allow` flag: broadcasts from the name's owner are delivered.
pub const RECEIVE_BROADCASTS: u32 = 0x10;

/// One element of `Allow` (`(usos)`): flags, bus name, object path, and `""`, `iface.*` or
/// `iface.Member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Flags (the constants above).
    pub flags: u32,
    /// Well-known bus name.
    pub name: String,
    /// Object path.
    pub path: String,
    /// Interface and maybe member.
    pub iface: String,
}

/// Rule `i` of the N-1 that name other services: `org.bench.Other{i}` with CALL_METHODS (odd
/// `i` also RECEIVE_BROADCASTS), every fifth a name subtree; its own path, the `/org/bench`
/// subtree or the echo's path; any interface, `org.bench.Other.*`, one member, or the echo's
/// own `org.bench.Echo.Ping`. None of them covers [`ECHO_NAME`] or [`EMITTER_NAME`].
pub fn decoy_rule(i: usize) -> AllowRule {
    let mut flags = CALL_METHODS;
    if i % 2 == 1 {
        flags |= RECEIVE_BROADCASTS;
    }
    if i % 5 == 0 {
        flags |= BUS_NAME_IS_SUBTREE;
    }
    let path = match i % 3 {
        0 => format!("/org/bench/Other{i}"),
        1 => {
            flags |= OBJECT_PATH_IS_SUBTREE;
            "/org/bench".to_owned()
        }
        _ => ECHO_PATH.to_owned(),
    };
    let iface = match i % 4 {
        0 => String::new(),
        1 => "org.bench.Other.*".to_owned(),
        2 => format!("org.bench.Other.Method{}", i % 100),
        _ => format!("{ECHO_INTERFACE}.{ECHO_MEMBER}"),
    };
    AllowRule {
        flags,
        name: format!("org.bench.Other{i}"),
        path,
        iface,
    }
}

/// The rule that lets the echo call through: CALL_METHODS on [`ECHO_NAME`], its path, its
/// interface and member.
pub fn echo_grant() -> AllowRule {
    AllowRule {
        flags: CALL_METHODS,
        name: ECHO_NAME.to_owned(),
        path: ECHO_PATH.to_owned(),
        iface: format!("{ECHO_INTERFACE}.{ECHO_MEMBER}"),
    }
}

/// The rule that lets the fanout signal in: RECEIVE_BROADCASTS from [`EMITTER_NAME`] for the
/// signal's path, interface and member.
pub fn emitter_grant() -> AllowRule {
    AllowRule {
        flags: RECEIVE_BROADCASTS,
        name: EMITTER_NAME.to_owned(),
        path: SIG_PATH.to_owned(),
        iface: format!("{SIG_INTERFACE}.{SIG_MEMBER}"),
    }
}

/// `n` rules (at least one): `n - 1` decoys, then `grant`, last, where a list checked in
/// order would find it latest.
pub fn allow_list(n: usize, grant: AllowRule) -> Vec<AllowRule> {
    let mut v: Vec<AllowRule> = (0..n.saturating_sub(1)).map(decoy_rule).collect();
    v.push(grant);
    v
}

/// The body of `AddServer` in its 2021 form (`ssa{sv}a{sv}`): no metadata, and `Allow`
/// (`a(usos)`) as the only named argument when `allow` is given.
pub fn add_server_body(name: &str, allow: Option<&[AllowRule]>) -> Vec<u8> {
    let mut b = Vec::new();
    wire::push_string(&mut b, CONTAINER_TYPE);
    wire::push_string(&mut b, name);
    let metadata = wire::begin_array(&mut b, 8);
    wire::end_array(&mut b, metadata);
    let named = wire::begin_array(&mut b, 8);
    if let Some(rules) = allow {
        wire::pad_body(&mut b, 8);
        wire::push_string(&mut b, "Allow");
        wire::push_signature(&mut b, "a(usos)");
        let list = wire::begin_array(&mut b, 8);
        for r in rules {
            wire::pad_body(&mut b, 8);
            wire::push_u32(&mut b, r.flags);
            wire::push_string(&mut b, &r.name);
            wire::push_string(&mut b, &r.path);
            wire::push_string(&mut b, &r.iface);
        }
        wire::end_array(&mut b, list);
    }
    wire::end_array(&mut b, named);
    b
}

/// The address in an `AddServer` reply (`oays`: instance path, socket path, address).
pub fn add_server_address(h: &Header<'_>) -> io::Result<String> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if h.signature != "oays" {
        return Err(bad(format!(
            "AddServer replied with signature {:?}, not \"oays\"",
            h.signature
        )));
    }
    let mut r = wire::BodyReader::new(h);
    let address = r
        .string()
        .and_then(|_| r.bytes())
        .and_then(|_| r.string())
        .map_err(|e| bad(format!("AddServer reply: {e}")))?;
    Ok(address.to_owned())
}

/// Whether an AddServer failure means the bus has no Containers1, or one without `Allow`
/// (rather than, say, a policy or limit refusal).
pub fn means_unsupported(error: &str) -> bool {
    let unknown = [
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.UnknownObject",
    ];
    unknown.iter().any(|u| error.contains(u))
        || (error.contains("org.freedesktop.DBus.Error.InvalidArgs")
            && error.contains("Allow")
            && !error.contains("Allow["))
}

/// Creates a Containers1 instance (owned by `manager`'s connection: it stops when that
/// connection goes) and returns its address. A bus without Containers1 `Allow` is an
/// [`io::ErrorKind::Unsupported`] error.
fn add_server(manager: &mut Conn, name: &str, allow: Option<&[AllowRule]>) -> io::Result<String> {
    let call = Outgoing {
        msg_type: wire::METHOD_CALL,
        path: DBUS_PATH,
        interface: CONTAINERS,
        member: "AddServer",
        destination: DBUS,
        signature: "ssa{sv}a{sv}",
        ..Outgoing::default()
    };
    let serial = manager.send(call, &add_server_body(name, allow))?;
    let reply = manager.recv_reply(serial).map_err(|e| {
        let text = e.to_string();
        if means_unsupported(&text) {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "not supported by this bus: it needs {CONTAINERS}.AddServer with the Allow \
                     named argument ({text})"
                ),
            )
        } else {
            io::Error::other(format!("AddServer ({name}): {text}"))
        }
    })?;
    add_server_address(&reply)
}

/// The three ways a client reaches the bus, in report order.
pub const PATHS: [&str; 3] = ["direct", "unfiltered container", "filtered container"];
/// Short names of [`PATHS`] for JSON keys.
const KEYS: [&str; 3] = ["direct", "unfiltered", "filtered"];
const DIRECT: usize = 0;
const UNFILTERED: usize = 1;
const FILTERED: usize = 2;

/// Parameters of `filtered`.
#[derive(Debug, Clone)]
pub struct FilterParams {
    /// Rules per filtered instance (N, at least 1: the one granting the measured traffic).
    pub rules: usize,
    /// Fanout subscribers per path (K; 0 skips the fanout part).
    pub subscribers: usize,
    /// Rounds; each measures every path once, rtt then fanout.
    pub rounds: usize,
    /// Most connections put into one instance: a bus limits them (`max_connections_per_container`,
    /// 8 by default in sluicebus and dbus-daemon), so K subscribers are spread over
    /// ⌈K / this⌉ instances of each kind, every filtered one with the same N rules.
    pub per_instance: usize,
    /// Where the rotation of the path order starts (`compare` passes its round number).
    pub rotate: usize,
    /// Measure only this path (an index into [`PATHS`]; `instructions.sh` counts one path's
    /// instructions at a time); the others stay n/a.
    pub only: Option<usize>,
}

/// The index into [`PATHS`] of `direct`, `unfiltered` or `filtered`.
pub fn path_index(key: &str) -> Option<usize> {
    KEYS.iter().position(|k| *k == key)
}

/// The default of [`FilterParams::per_instance`]: the default `max_connections_per_container`.
pub const PER_INSTANCE: usize = 8;

/// Per-round results of `filtered`, per path ([`PATHS`] order), in µs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterReport {
    /// N.
    pub rules: usize,
    /// K.
    pub subscribers: usize,
    /// Calls and signals per path per round.
    pub count: u64,
    /// rtt p50 per round.
    pub rtt_p50: [Vec<f64>; 3],
    /// rtt p99 per round.
    pub rtt_p99: [Vec<f64>; 3],
    /// Fanout p50 per round.
    pub fan_p50: [Vec<f64>; 3],
    /// Fanout p99 per round.
    pub fan_p99: [Vec<f64>; 3],
}

/// One row of the report.
struct Measure {
    label: String,
    key: &'static str,
    /// Per path ([`PATHS`] order), the median over rounds.
    medians: [f64; 3],
    /// The median over rounds of filtered / unfiltered.
    over_unfiltered: f64,
    /// The median over rounds of filtered / direct.
    over_direct: f64,
}

/// filtered / `other` for each round.
fn ratios(v: &[Vec<f64>; 3], other: usize) -> Vec<f64> {
    v[FILTERED]
        .iter()
        .zip(&v[other])
        .map(|(f, o)| f / o)
        .collect()
}

/// Median of the values without disturbing their (round) order.
fn med(v: &[f64]) -> f64 {
    median(&mut v.to_vec())
}

/// The target: filtered rtt p50 at most this many times the unfiltered one.
pub const TARGET: f64 = 1.1;

impl FilterReport {
    /// Adds `other`'s rounds to these (compare runs one round at a time).
    pub fn extend(&mut self, other: &FilterReport) {
        self.rules = other.rules;
        self.subscribers = other.subscribers;
        self.count = other.count;
        for (mine, theirs) in [
            (&mut self.rtt_p50, &other.rtt_p50),
            (&mut self.rtt_p99, &other.rtt_p99),
            (&mut self.fan_p50, &other.fan_p50),
            (&mut self.fan_p99, &other.fan_p99),
        ] {
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.extend_from_slice(t);
            }
        }
    }

    /// Rounds recorded.
    pub fn rounds(&self) -> usize {
        self.rtt_p50[DIRECT].len()
    }

    /// The measures: label, JSON key, per-path medians, and the medians of the per-round
    /// ratios filtered / unfiltered and filtered / direct.
    fn measures(&self) -> Vec<Measure> {
        let k = self.subscribers;
        let measure = |label: String, key: &'static str, v: &[Vec<f64>; 3]| Measure {
            label,
            key,
            medians: [med(&v[0]), med(&v[1]), med(&v[2])],
            over_unfiltered: med(&ratios(v, UNFILTERED)),
            over_direct: med(&ratios(v, DIRECT)),
        };
        vec![
            measure("rtt p50".to_owned(), "rtt_p50", &self.rtt_p50),
            measure("rtt p99".to_owned(), "rtt_p99", &self.rtt_p99),
            measure(format!("fanout K={k} p50"), "fanout_p50", &self.fan_p50),
            measure(format!("fanout K={k} p99"), "fanout_p99", &self.fan_p99),
        ]
    }

    /// filtered / unfiltered rtt p50 of each round.
    pub fn round_ratios(&self) -> Vec<f64> {
        ratios(&self.rtt_p50, UNFILTERED)
    }

    /// The Markdown rows (`| measure | direct | unfiltered | filtered | f/u | f/d |`), each
    /// led by `lead` cells (compare puts the bus name there).
    pub fn rows(&self, lead: &str) -> String {
        let mut out = String::new();
        for m in self.measures() {
            out.push_str(&format!(
                "| {lead}{} | {} | {} | {} | {} | {} |\n",
                m.label,
                fixed(m.medians[DIRECT], 1),
                fixed(m.medians[UNFILTERED], 1),
                fixed(m.medians[FILTERED], 1),
                fixed(m.over_unfiltered, 2),
                fixed(m.over_direct, 2)
            ));
        }
        out
    }

    /// The header of [`FilterReport::rows`], with `lead` column titles first.
    pub fn header(lead: &str) -> String {
        let mut out = format!("| {lead}measure [µs] |");
        for p in PATHS {
            out.push_str(&format!(" {p} |"));
        }
        out.push_str(" filtered / unfiltered | filtered / direct |\n|---|");
        for _ in 0..lead.matches('|').count() + PATHS.len() + 2 {
            out.push_str("---|");
        }
        out.push('\n');
        out
    }

    /// The sentence about the target (filtered rtt p50 ≤ 1.1 × unfiltered), judged on
    /// the median of the per-round ratios (each round's paths ran back to back, under the same
    /// machine load; the latency here is bimodal, about 30 or 60 µs from one round to the
    /// next, which the ratio of the medians, quoted too, does not survive).
    pub fn verdict(&self) -> String {
        let paired = med(&self.round_ratios());
        let of_medians = med(&self.rtt_p50[FILTERED]) / med(&self.rtt_p50[UNFILTERED]);
        let met = if !paired.is_finite() {
            "not measured"
        } else if paired <= TARGET {
            "met"
        } else {
            "NOT met"
        };
        format!(
            "target filtered rtt p50 <= {TARGET:.2} x unfiltered: {met} (median of the \
             per-round ratios {}; ratio of the medians {})",
            fixed(paired, 2),
            fixed(of_medians, 2)
        )
    }

    /// The report `filtered` prints: parameters, the table, per-round ratios, the verdict.
    pub fn table(&self) -> String {
        let mut out = format!(
            "filtered: Containers1 Allow with N={} rules; {} rounds, each path {} calls (rtt) \
             and {} signals to K={} subscribers (fanout) per round, paths interleaved in a \
             rotating order; medians over rounds (ratios: of each round's pair)\n\n",
            self.rules,
            self.rounds(),
            self.count,
            self.count,
            self.subscribers
        );
        out.push_str(&Self::header(""));
        out.push_str(&self.rows(""));
        let per_round: Vec<String> = self.round_ratios().iter().map(|r| fixed(*r, 2)).collect();
        out.push_str(&format!(
            "\nfiltered / unfiltered rtt p50 per round: {}\n{}\n",
            per_round.join(" "),
            self.verdict()
        ));
        out
    }

    /// One flat JSON object: the medians as `<measure>_<path>` and the ratios as
    /// `<measure>_filtered_over_<path>` (null when not measured).
    pub fn json(&self) -> String {
        let num = |v: f64| {
            if v.is_finite() {
                format!("{v:.3}")
            } else {
                "null".to_owned()
            }
        };
        let mut fields = vec![
            "\"scenario\":\"filtered\"".to_owned(),
            format!(
                "\"params\":{{\"rules\":{},\"subscribers\":{},\"rounds\":{},\"count\":{}}}",
                self.rules,
                self.subscribers,
                self.rounds(),
                self.count
            ),
            "\"unit\":\"us\"".to_owned(),
        ];
        for m in self.measures() {
            let key = m.key;
            for (p, v) in KEYS.iter().zip(m.medians) {
                fields.push(format!("\"{key}_{p}\":{}", num(v)));
            }
            fields.push(format!(
                "\"{key}_filtered_over_unfiltered\":{}",
                num(m.over_unfiltered)
            ));
            fields.push(format!(
                "\"{key}_filtered_over_direct\":{}",
                num(m.over_direct)
            ));
        }
        format!("{{{}}}", fields.join(","))
    }
}

/// The echo service, outside any container, owning [`ECHO_NAME`]; told to quit on drop.
struct Echo {
    ctl: Conn,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl Echo {
    fn start(address: &str) -> io::Result<Echo> {
        let mut conn = Conn::connect(address)?;
        conn.request_name(ECHO_NAME)?;
        let ctl = Conn::connect(address)?;
        let thread = Some(thread::spawn(move || scenarios::echo_loop(conn)));
        Ok(Echo { ctl, thread })
    }

    fn stop(mut self) -> io::Result<()> {
        self.quit()
    }

    fn quit(&mut self) -> io::Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        scenarios::send_quit(&mut self.ctl, ECHO_NAME)?;
        t.join()
            .map_err(|_| io::Error::other("echo thread panicked"))?
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.quit();
    }
}

/// Proves that the filtered instance filters: a call to the echo service's name that no rule
/// grants (another member) must come back as AccessDenied, not reach the echo service (which
/// would answer it).
fn check_filtering(address: &str) -> io::Result<()> {
    let mut client = Conn::connect(address)?;
    let call = Outgoing {
        member: "NotGranted",
        ..scenarios::ping(ECHO_NAME, "")
    };
    let serial = client.send(call, &[])?;
    match client.recv_reply(serial) {
        Err(e)
            if e.to_string()
                .contains("org.freedesktop.DBus.Error.AccessDenied") =>
        {
            Ok(())
        }
        Err(e) => Err(io::Error::other(format!(
            "the filtered instance answered an ungranted call with an unexpected error: {e}"
        ))),
        Ok(_) => Err(io::Error::other(
            "the filtered instance let an ungranted call through: the bus ignores Allow",
        )),
    }
}

/// Runs `filtered` against the bus at `c.address` (see the module documentation).
pub fn filtered(c: &Common, p: &FilterParams) -> io::Result<FilterReport> {
    if p.rules == 0 {
        return Err(io::Error::other(
            "--rules must be at least 1 (the rule that grants the measured traffic)",
        ));
    }
    // The instances first: a bus without `Allow` fails here, before anything else starts.
    let mut manager = Conn::connect(&c.address)?;
    let filtered_rtt = add_server(
        &mut manager,
        "filtered-rtt",
        Some(&allow_list(p.rules, echo_grant())),
    )?;
    let unfiltered = add_server(&mut manager, "unfiltered", None)?;
    // Fanout instances: ⌈K / per_instance⌉ of each kind; the first unfiltered one is shared.
    let per = p.per_instance.max(1);
    let n_fan = p.subscribers.div_ceil(per);
    let fan_rules = allow_list(p.rules, emitter_grant());
    let mut filtered_fan = Vec::with_capacity(n_fan);
    let mut unfiltered_fan = vec![unfiltered.clone()];
    for i in 0..n_fan {
        let name = format!("filtered-fanout-{i}");
        filtered_fan.push(add_server(&mut manager, &name, Some(&fan_rules))?);
        if i > 0 {
            let name = format!("unfiltered-{i}");
            unfiltered_fan.push(add_server(&mut manager, &name, None)?);
        }
    }
    let direct_fan = vec![c.address.clone()];
    let echo = Echo::start(&c.address)?;
    check_filtering(&filtered_rtt)?;
    let mut emitter = Conn::connect(&c.address)?;
    emitter.request_name(EMITTER_NAME)?;
    if c.progress {
        eprintln!(
            "[filtered] {} rules per filtered instance; instances: rtt unfiltered {unfiltered}, \
             rtt filtered {filtered_rtt}, fanout filtered {}",
            p.rules,
            filtered_fan.join(" ")
        );
    }
    let quiet = Common {
        progress: false,
        ..c.clone()
    };
    let mut r = FilterReport {
        rules: p.rules,
        subscribers: p.subscribers,
        count: c.count,
        ..FilterReport::default()
    };
    for round in 0..p.rounds {
        let order = |j: usize| (p.rotate + round + j) % PATHS.len();
        let log = |what: &str, path: usize, s: &scenarios::Summary| {
            if c.progress {
                eprintln!(
                    "[filtered round {}/{}] {what:<12} {:<20} p50 {:>8.1} µs  p99 {:>8.1} µs",
                    round + 1,
                    p.rounds,
                    PATHS[path],
                    s.p50,
                    s.p99
                );
            }
        };
        let wanted = |path: usize| p.only.map_or(true, |o| o == path);
        for j in 0..PATHS.len() {
            let path = order(j);
            if !wanted(path) {
                continue;
            }
            let address = [&c.address, &unfiltered, &filtered_rtt][path];
            let mut client = Conn::connect(address)?;
            let (s, _) = scenarios::call_loop(&quiet, "filtered", &mut client, ECHO_NAME)?;
            log("rtt", path, &s);
            r.rtt_p50[path].push(s.p50);
            r.rtt_p99[path].push(s.p99);
        }
        if p.subscribers == 0 {
            continue;
        }
        for j in 0..PATHS.len() {
            let path = order(j);
            if !wanted(path) {
                continue;
            }
            let addresses = [&direct_fan, &unfiltered_fan, &filtered_fan][path];
            let mut subs = Vec::with_capacity(p.subscribers);
            for i in 0..p.subscribers {
                let mut s = Conn::connect(&addresses[i % addresses.len()])?;
                s.add_matches(&[MATCHING_RULE.to_owned()], 1)?;
                subs.push(s);
            }
            let label = format!("filtered fanout {}", PATHS[path]);
            let s = scenarios::emit_loop(&quiet, label, &mut emitter, &mut subs)?;
            log(&format!("fanout K={}", p.subscribers), path, &s);
            r.fan_p50[path].push(s.p50);
            r.fan_p99[path].push(s.p99);
        }
    }
    echo.stop()?;
    drop(manager);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `rule` covers a message from/to `name` at `path` with `iface.member`, as
    /// src/bus/filter.rs defines it (names: exact or, for subtrees, dot-separated descendants).
    fn covers(rule: &AllowRule, name: &str, path: &str, iface: &str, member: &str) -> bool {
        let path_ok = if rule.flags & OBJECT_PATH_IS_SUBTREE != 0 {
            rule.path == "/" || below(path, &rule.path, '/')
        } else {
            path == rule.path
        };
        let iface_ok = rule.iface.is_empty()
            || rule.iface == format!("{iface}.*")
            || rule.iface == format!("{iface}.{member}");
        names(rule, name) && path_ok && iface_ok
    }

    fn below(x: &str, root: &str, sep: char) -> bool {
        x == root || x.strip_prefix(root).is_some_and(|r| r.starts_with(sep))
    }

    /// Whether `rule` applies to bus name `name`.
    fn names(rule: &AllowRule, name: &str) -> bool {
        if rule.flags & BUS_NAME_IS_SUBTREE != 0 {
            rule.name.is_empty() || below(name, &rule.name, '.')
        } else {
            name == rule.name
        }
    }

    #[test]
    fn exactly_one_rule_grants_the_measured_traffic() {
        let rtt = allow_list(1000, echo_grant());
        assert_eq!(rtt.len(), 1000);
        let call = |r: &AllowRule| {
            r.flags & CALL_METHODS != 0
                && covers(r, ECHO_NAME, ECHO_PATH, ECHO_INTERFACE, ECHO_MEMBER)
        };
        assert_eq!(rtt.iter().filter(|r| call(r)).count(), 1);
        assert_eq!(rtt.last(), Some(&echo_grant()));
        let fan = allow_list(1000, emitter_grant());
        let hear = |r: &AllowRule| {
            r.flags & RECEIVE_BROADCASTS != 0
                && covers(r, EMITTER_NAME, SIG_PATH, SIG_INTERFACE, SIG_MEMBER)
        };
        assert_eq!(fan.iter().filter(|r| hear(r)).count(), 1);
        // No decoy names the echo or the emitter in any way, so each grant is alone.
        for r in &rtt[..999] {
            for n in [ECHO_NAME, EMITTER_NAME] {
                assert!(!names(r, n), "{r:?} names {n}");
            }
        }
        assert_eq!(allow_list(1, echo_grant()), vec![echo_grant()]);
    }

    #[test]
    fn decoys_vary_and_are_valid() {
        let decoys: Vec<AllowRule> = (0..60).map(decoy_rule).collect();
        let distinct = |f: &dyn Fn(&AllowRule) -> String| {
            let mut v: Vec<String> = decoys.iter().map(f).collect();
            v.sort();
            v.dedup();
            v.len()
        };
        assert_eq!(distinct(&|r| r.name.clone()), 60);
        assert!(distinct(&|r| r.flags.to_string()) >= 4);
        assert!(distinct(&|r| r.path.clone()) > 3);
        assert!(distinct(&|r| r.iface.clone()) > 4);
        assert!(decoys.iter().all(|r| r.flags & CALL_METHODS != 0));
        assert!(decoys.iter().any(|r| r.flags & BUS_NAME_IS_SUBTREE != 0));
        assert!(decoys.iter().any(|r| r.flags & OBJECT_PATH_IS_SUBTREE != 0));
        for r in &decoys {
            assert!(r.name.split('.').all(|e| !e.is_empty()), "{r:?}");
            assert!(r.path.starts_with('/') && !r.path.ends_with('/'), "{r:?}");
            assert!(r.flags & !0x7f == 0, "{r:?}");
            assert!(
                r.iface.is_empty() || r.iface.ends_with(".*") || r.iface.matches('.').count() >= 2,
                "{r:?}"
            );
        }
    }

    /// Reads back what [`add_server_body`] wrote, by the rules of the wire format.
    struct Reader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl Reader<'_> {
        fn align(&mut self, a: usize) {
            while self.pos % a != 0 {
                assert_eq!(self.b[self.pos], 0, "padding at {}", self.pos);
                self.pos += 1;
            }
        }
        fn u32(&mut self) -> u32 {
            self.align(4);
            let v = u32::from_le_bytes(self.b[self.pos..self.pos + 4].try_into().unwrap());
            self.pos += 4;
            v
        }
        fn string(&mut self) -> String {
            let n = self.u32() as usize;
            let s = String::from_utf8(self.b[self.pos..self.pos + n].to_vec()).unwrap();
            assert_eq!(self.b[self.pos + n], 0);
            self.pos += n + 1;
            s
        }
        fn signature(&mut self) -> String {
            let n = self.b[self.pos] as usize;
            let s = String::from_utf8(self.b[self.pos + 1..self.pos + 1 + n].to_vec()).unwrap();
            self.pos += n + 2;
            s
        }
        /// Array length, then the offset where its elements end.
        fn array(&mut self, elem_align: usize) -> usize {
            let len = self.u32() as usize;
            self.align(elem_align);
            self.pos + len
        }
    }

    #[test]
    fn add_server_body_without_allow() {
        let b = add_server_body("x", None);
        let mut want = Vec::new();
        want.extend_from_slice(&18u32.to_le_bytes());
        want.extend_from_slice(b"org.bench.Filtered\0");
        want.push(0); // pad to 4
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(b"x\0");
        want.extend_from_slice(&[0, 0]); // pad to 4
        want.extend_from_slice(&[0; 4]); // metadata: length 0 at offset 32
        want.extend_from_slice(&[0; 4]); // pad to 8: where its dict entries would start
        want.extend_from_slice(&[0; 4]); // named arguments: length 0 at offset 40
        want.extend_from_slice(&[0; 4]); // pad to 8
        assert_eq!(b, want);
        assert_eq!(b.len(), 48);
    }

    #[test]
    fn add_server_body_with_allow_reads_back() {
        let rules = allow_list(7, echo_grant());
        let b = add_server_body("filtered-rtt", Some(&rules));
        let mut r = Reader { b: &b, pos: 0 };
        assert_eq!(r.string(), CONTAINER_TYPE);
        assert_eq!(r.string(), "filtered-rtt");
        let end = r.array(8);
        assert_eq!(r.pos, end, "metadata is empty");
        let named_end = r.array(8);
        r.align(8);
        assert_eq!(r.string(), "Allow");
        assert_eq!(r.signature(), "a(usos)");
        let list_end = r.array(8);
        let mut got = Vec::new();
        while r.pos < list_end {
            r.align(8);
            got.push(AllowRule {
                flags: r.u32(),
                name: r.string(),
                path: r.string(),
                iface: r.string(),
            });
        }
        assert_eq!(r.pos, list_end);
        assert_eq!(got, rules);
        assert_eq!(r.pos, named_end);
        assert_eq!(r.pos, b.len());
    }

    #[test]
    fn reply_address_and_errors() {
        let mut body = Vec::new();
        wire::push_string(&mut body, "/org/freedesktop/DBus/Containers1/c1");
        wire::push_bytes(&mut body, b"/run/x/dbus-abc\0");
        wire::push_string(&mut body, "unix:path=/run/x/dbus-abc,guid=01");
        let h = Header {
            little_endian: true,
            signature: "oays",
            body: &body,
            ..Header::default()
        };
        assert_eq!(
            add_server_address(&h).unwrap(),
            "unix:path=/run/x/dbus-abc,guid=01"
        );
        let h = Header {
            signature: "oa{sv}",
            ..h
        };
        assert!(add_server_address(&h).is_err());
        let h = Header {
            signature: "oays",
            body: &body[..20],
            ..h
        };
        assert!(add_server_address(&h).is_err());

        for unsupported in [
            "call 2 failed: org.freedesktop.DBus.Error.UnknownMethod: no such method",
            "call 2 failed: org.freedesktop.DBus.Error.UnknownInterface",
            "call 2 failed: org.freedesktop.DBus.Error.InvalidArgs: Named parameter Allow is not understood",
        ] {
            assert!(means_unsupported(unsupported), "{unsupported}");
        }
        for other in [
            "call 2 failed: org.freedesktop.DBus.Error.InvalidArgs: Allow[3]: object path \"x\" is not a valid path",
            "call 2 failed: org.freedesktop.DBus.Error.LimitsExceeded: Too many containers",
            "call 2 failed: org.freedesktop.DBus.Error.AccessDenied",
        ] {
            assert!(!means_unsupported(other), "{other}");
        }
    }

    /// A fake bus on a socketpair answers AddServer with `error` (name and message).
    fn add_server_against(error: (&'static str, &'static str)) -> io::Error {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let bus = thread::spawn(move || {
            let mut bus = Conn::from_stream(b);
            let h = bus.recv().unwrap();
            assert_eq!((h.interface, h.member), (CONTAINERS, "AddServer"));
            assert_eq!(h.signature, "ssa{sv}a{sv}");
            let serial = h.serial;
            let mut body = Vec::new();
            wire::push_string(&mut body, error.1);
            let reply = Outgoing {
                msg_type: wire::ERROR,
                reply_serial: serial,
                error_name: error.0,
                signature: "s",
                ..Outgoing::default()
            };
            bus.send(reply, &body).unwrap();
            bus
        });
        let mut manager = Conn::from_stream(a);
        let e = add_server(&mut manager, "x", Some(&[echo_grant()])).unwrap_err();
        drop(bus.join().unwrap());
        e
    }

    #[test]
    fn a_bus_without_allow_is_unsupported() {
        let e = add_server_against((
            "org.freedesktop.DBus.Error.UnknownMethod",
            "Unknown method AddServer",
        ));
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        let text = e.to_string();
        assert!(text.starts_with("not supported by this bus"), "{text}");
        assert!(
            text.contains("UnknownMethod: Unknown method AddServer"),
            "{text}"
        );
        let e = add_server_against((
            "org.freedesktop.DBus.Error.InvalidArgs",
            "Named parameter Allow is not understood",
        ));
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        // Any other refusal is a plain failure, with the bus's reason.
        let e = add_server_against((
            "org.freedesktop.DBus.Error.LimitsExceeded",
            "Too many containers for user 0 (16)",
        ));
        assert_eq!(e.kind(), io::ErrorKind::Other, "{e}");
        assert!(e.to_string().contains("Too many containers"), "{e}");
    }

    fn sample() -> FilterReport {
        FilterReport {
            rules: 1000,
            subscribers: 10,
            count: 100,
            rtt_p50: [vec![50.0, 52.0], vec![60.0, 64.0], vec![63.0, 64.64]],
            rtt_p99: [vec![80.0; 2], vec![90.0; 2], vec![99.0; 2]],
            fan_p50: [vec![40.0; 2], vec![40.0; 2], vec![44.0; 2]],
            fan_p99: [vec![], vec![], vec![]],
        }
    }

    #[test]
    fn report_table_json_and_verdict() {
        let r = sample();
        let t = r.table();
        assert!(t.contains("N=1000 rules; 2 rounds"), "{t}");
        assert!(t.contains(
            "| measure [µs] | direct | unfiltered container | filtered container | filtered / unfiltered | filtered / direct |\n|---|---|---|---|---|---|\n"
        ), "{t}");
        assert!(
            t.contains("| rtt p50 | 51.0 | 62.0 | 63.8 | 1.03 | 1.25 |"),
            "{t}"
        );
        assert!(
            t.contains("| fanout K=10 p50 | 40.0 | 40.0 | 44.0 | 1.10 | 1.10 |"),
            "{t}"
        );
        assert!(
            t.contains("| fanout K=10 p99 | n/a | n/a | n/a | n/a | n/a |"),
            "{t}"
        );
        assert!(t.contains("per round: 1.05 1.01\n"), "{t}");
        assert!(
            t.contains("x unfiltered: met (median of the per-round ratios 1.03; ratio of the medians 1.03)"),
            "{t}"
        );
        let j = r.json();
        assert!(j.starts_with("{\"scenario\":\"filtered\",\"params\":{\"rules\":1000,\"subscribers\":10,\"rounds\":2,\"count\":100},\"unit\":\"us\",\"rtt_p50_direct\":51.000,"), "{j}");
        assert!(j.contains("\"rtt_p50_unfiltered\":62.000,"), "{j}");
        assert!(j.contains("\"rtt_p50_filtered_over_direct\":1.252,"), "{j}");
        assert!(j.contains("\"fanout_p99_filtered\":null,"), "{j}");
        assert!(
            j.ends_with("\"fanout_p99_filtered_over_direct\":null}"),
            "{j}"
        );

        let mut slow = sample();
        slow.rtt_p50[FILTERED] = vec![70.0, 70.0];
        assert!(
            slow.verdict()
                .contains("NOT met (median of the per-round ratios 1.13;"),
            "{}",
            slow.verdict()
        );
        assert!(FilterReport::default().verdict().contains("not measured"));

        // compare's layout: a bus column first; extend adds rounds.
        let mut all = FilterReport::default();
        all.extend(&sample());
        all.extend(&sample());
        assert_eq!(all.rounds(), 4);
        assert!(FilterReport::header("bus | ").starts_with("| bus | measure [µs] | direct |"));
        assert!(FilterReport::header("bus | ").ends_with("|---|---|---|---|---|---|---|\n"));
        assert!(all
            .rows("sluicebus | ")
            .contains("| sluicebus | rtt p99 | 80.0 | 90.0 | 99.0 | 1.10 | 1.24 |"));
    }
}
