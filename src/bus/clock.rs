//! The time, for the bus core and the reactor, read from the system at most once per event
//! loop turn and only if something in the turn needs it: a relayed message in a loop that
//! forwards one message per turn usually needs no time at all (no deadline is set or
//! checked), and a clock read costs as much as a third of the bus's work for it.
//!
//! The core stays free of system calls: the reading function is supplied by the host
//! (`Instant::now` in the reactor); tests and the fuzzer use a fixed, virtual time.

use std::cell::Cell;
use std::time::Instant;

/// Where a [`Clock`] gets its time.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Always this time (tests, the fuzzer, a bus driven without a host).
    Fixed(Instant),
    /// Read by this function, on first demand in a turn.
    Read(fn() -> Instant),
}

/// The time of the event being handled. Every demand in one turn gets the same time, read
/// on the first demand: a deadline set in a turn is set from a time read in that turn (so
/// it cannot fire early because the turn started long after the last reading), and the
/// checks and deadlines of one turn agree with each other.
#[derive(Debug, Clone)]
pub struct Clock {
    /// This turn's reading, once taken.
    at: Cell<Option<Instant>>,
    source: Source,
}

impl Clock {
    /// A clock that always says `t`.
    pub fn fixed(t: Instant) -> Clock {
        Clock {
            at: Cell::new(Some(t)),
            source: Source::Fixed(t),
        }
    }

    /// A clock read by `read` on the first demand of each turn.
    pub fn reading(read: fn() -> Instant) -> Clock {
        Clock {
            at: Cell::new(None),
            source: Source::Read(read),
        }
    }

    /// The current time: this turn's reading, taken now if it was not yet.
    #[inline]
    pub fn now(&self) -> Instant {
        match self.at.get() {
            Some(t) => t,
            None => self.read(),
        }
    }

    #[cold]
    fn read(&self) -> Instant {
        let t = match self.source {
            Source::Fixed(t) => t,
            Source::Read(read) => read(),
        };
        self.at.set(Some(t));
        t
    }

    /// This turn's reading, if one was taken (a fixed clock's time).
    pub fn taken(&self) -> Option<Instant> {
        self.at.get()
    }

    /// A new turn began: the next demand reads the time again.
    pub fn new_turn(&self) {
        if let Source::Read(_) = self.source {
            self.at.set(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    thread_local! {
        static READS: Cell<u32> = const { Cell::new(0) };
        static BASE: Instant = Instant::now();
    }

    /// A stand-in clock: each reading is one second after the previous one.
    fn ticking() -> Instant {
        let n = READS.with(|r| {
            r.set(r.get() + 1);
            r.get()
        });
        BASE.with(|b| *b + Duration::from_secs(u64::from(n)))
    }

    #[test]
    fn read_once_per_turn_on_demand() {
        READS.with(|r| r.set(0));
        let c = Clock::reading(ticking);
        assert_eq!(c.taken(), None);
        assert_eq!(READS.with(Cell::get), 0, "no demand, no reading");
        let t1 = c.now();
        assert_eq!(c.now(), t1, "one reading per turn");
        assert_eq!(READS.with(Cell::get), 1);
        // Turns without a demand read nothing; the next demand gets a fresh time, not the
        // last turn's (a deadline set from it would fire early).
        c.new_turn();
        c.new_turn();
        assert_eq!(c.taken(), None);
        assert_eq!(READS.with(Cell::get), 1);
        let t2 = c.now();
        assert_eq!(t2, t1 + Duration::from_secs(1));
        assert_eq!(READS.with(Cell::get), 2);
    }

    #[test]
    fn fixed_stays() {
        let t = Instant::now();
        let c = Clock::fixed(t);
        c.new_turn();
        assert_eq!(c.taken(), Some(t));
        assert_eq!(c.now(), t);
    }
}
