//! `memory-partial`: what one uid can make the bus hold with messages it never finishes.
//!
//! N connections (all of the bench's uid) each send all but the last 8 bytes of one large
//! message, then stop. A bus that holds every partial message holds about N × SIZE; a bus
//! with a per-uid quota (dbus-broker; sluicebus's `max_bytes_per_user`) refuses the
//! connection that would take the uid past it. Reported: the bus's VmRSS before, its VmHWM
//! after every connection has sent what it will, how many connections the bus hung up on,
//! and VmRSS once they have all closed.

use crate::client::Conn;
use crate::flood::status_kib;
use crate::scenarios::Common;
use crate::wire::{self, Outgoing};
use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

/// `memory-partial` parameters.
#[derive(Debug, Clone)]
pub struct PartialParams {
    /// Connections, each sending one unfinished message.
    pub conns: usize,
    /// Size of each message on the wire, bytes.
    pub size: usize,
    /// How long to wait after the last connection before closing them all.
    pub settle: Duration,
}

/// What `memory-partial` saw.
#[derive(Debug, Clone)]
pub struct Partial {
    /// The parameters.
    pub params: PartialParams,
    /// VmRSS with the bench's connections open, before any partial message, KiB.
    pub idle_kib: u64,
    /// VmHWM once every connection has sent what it will, KiB.
    pub peak_kib: u64,
    /// Connections whose bytes the bus stopped taking: it hung up, or a write blocked for
    /// more than 2 s (reads paused).
    pub refused: usize,
    /// VmRSS `settle` after every connection closed, KiB.
    pub after_kib: u64,
}

/// One signal (nobody subscribes) with an `ay` body making it `size` bytes on the wire.
fn message(conn: &mut Conn, size: usize) -> Vec<u8> {
    let sig = Outgoing {
        msg_type: wire::SIGNAL,
        path: "/org/bench/Partial",
        interface: "org.bench.Partial",
        member: "Big",
        signature: "ay",
        serial: conn.serial(),
        ..Outgoing::default()
    };
    // Header is well under 256 bytes: fill the rest with the body.
    let mut probe = Vec::new();
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &[]);
    wire::encode(&mut probe, &sig, &body);
    let payload = size.saturating_sub(probe.len());
    body.clear();
    wire::push_bytes(&mut body, &vec![0x5a; payload]);
    let mut out = Vec::with_capacity(size);
    wire::encode(&mut out, &sig, &body);
    out
}

/// Run `memory-partial` against the bus whose process id is `pid`.
pub fn memory_partial(c: &Common, pid: u32, p: &PartialParams) -> io::Result<Partial> {
    let mut conns = Vec::with_capacity(p.conns);
    for _ in 0..p.conns {
        conns.push(Conn::connect(&c.address)?);
    }
    let idle_kib = status_kib(pid, "VmRSS:")?;
    let mut refused = 0;
    for (i, conn) in conns.iter_mut().enumerate() {
        let bytes = message(conn, p.size);
        let cut = bytes.len().saturating_sub(8);
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        if conn.send_raw(&bytes[..cut]).is_err() {
            refused += 1;
        }
        if c.progress {
            eprintln!(
                "memory-partial: {}/{} sent, {refused} refused",
                i + 1,
                p.conns
            );
        }
    }
    // Let the bus take in what is in the socket buffers before reading the peak.
    std::thread::sleep(Duration::from_millis(500));
    let peak_kib = status_kib(pid, "VmHWM:")?;
    drop(conns);
    let closed = Instant::now();
    std::thread::sleep(p.settle.saturating_sub(closed.elapsed()));
    let after_kib = status_kib(pid, "VmRSS:")?;
    Ok(Partial {
        params: p.clone(),
        idle_kib,
        peak_kib,
        refused,
        after_kib,
    })
}

impl Partial {
    /// A Markdown table of the result.
    pub fn table(&self) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        let p = &self.params;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "memory-partial: {} connections × {:.1} MiB unfinished messages ({:.0} MiB offered)\n",
            p.conns,
            p.size as f64 / 1048576.0,
            (p.conns * p.size) as f64 / 1048576.0
        );
        let _ = writeln!(s, "| measure | value |\n|---|---|");
        let _ = writeln!(s, "| VmRSS before [MiB] | {:.1} |", mib(self.idle_kib));
        let _ = writeln!(s, "| VmHWM (peak) [MiB] | {:.1} |", mib(self.peak_kib));
        let _ = writeln!(s, "| connections refused | {} |", self.refused);
        let _ = writeln!(
            s,
            "| VmRSS {:.0} s after closing [MiB] | {:.1} |",
            p.settle.as_secs_f64(),
            mib(self.after_kib)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_has_the_size_asked_for_and_parses() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut conn = Conn::from_stream(a);
        for size in [4096, 65536, 1 << 20] {
            let m = message(&mut conn, size);
            assert_eq!(m.len(), size);
            let h = wire::parse(&m).expect("parses");
            assert_eq!(h.member, "Big");
        }
    }

    #[test]
    fn table_names_every_measure() {
        let r = Partial {
            params: PartialParams {
                conns: 50,
                size: 32 << 20,
                settle: Duration::from_secs(3),
            },
            idle_kib: 3 * 1024,
            peak_kib: 300 * 1024,
            refused: 42,
            after_kib: 4 * 1024,
        };
        let t = r.table();
        for want in [
            "50 connections × 32.0 MiB",
            "| VmHWM (peak) [MiB] | 300.0 |",
            "| connections refused | 42 |",
            "3 s after closing",
        ] {
            assert!(t.contains(want), "{want:?} in {t}");
        }
    }
}
