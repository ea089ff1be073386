//! When the reactor yields its CPU at the end of a turn (issue 11: a bystander's round trip
//! during a flood).
//!
//! A write to a socket wakes its reader with a "sync" wakeup: the kernel puts the woken task
//! on the writer's CPU, expecting the writer to sleep soon. A bus with reads left over
//! (a flood) polls again without sleeping, so that reader (a reply's caller, a call's
//! service) waits for the scheduler's tick, up to 4 ms, while the other CPU may sit idle;
//! a round trip is two such hops. `perf sched timehist` of `sluicebus-bench flood` showed
//! exactly that behind the slow calls (bench/README.md, "bystander p99 during a flood").
//! So a turn of a busy bus that emptied a queue (its reader had everything it waited for,
//! so was likely asleep on it) yields the CPU: the woken reader runs now, on this CPU, and
//! the bus next. Busy: the turn leaves reads for the next one, or began with reads left by
//! the last (a flood's last budget, after which its flooder writes again at once). A
//! flood's subscriber, whose queue does not empty, costs no yield; nor does an idle bus's
//! turn (a round trip at rest: the bus sleeps in poll and hands the CPU over anyway), so
//! syscalls per message at rest are unchanged.

/// Whether the turn under way emptied a queue.
#[derive(Debug, Default)]
pub struct HandOver {
    emptied: bool,
}

impl HandOver {
    /// A write emptied a queue this turn.
    pub fn emptied(&mut self) {
        self.emptied = true;
    }

    /// At the end of a turn: whether to yield before the next, `busy` telling whether this
    /// turn began or ends with reads left over. Starts the next turn afresh either way.
    pub fn end_turn(&mut self, busy: bool) -> bool {
        std::mem::take(&mut self.emptied) && busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_only_after_a_busy_turn_emptied_a_queue() {
        let mut h = HandOver::default();
        assert!(!h.end_turn(true), "nothing written: no yield");
        h.emptied();
        h.emptied();
        assert!(!h.end_turn(false), "an idle bus's turn: no yield");
        assert!(
            !h.end_turn(true),
            "the last turn's write does not count again"
        );
        h.emptied();
        assert!(h.end_turn(true));
        assert!(!h.end_turn(true), "one yield per turn that emptied queues");
    }
}
