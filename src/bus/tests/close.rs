//! A connection that goes with messages queued for it (issue 11): everything observable
//! happens at once, as before (names released, NameOwnerChanged), but its queue is released
//! a bounded piece per reactor turn (`Bus::reap`), so that dropping millions of queued
//! messages never stalls the other clients in one turn. Until released, the messages stay
//! charged to their senders.

use super::harness::*;

/// `n` signals from `from`, one message each, for every subscriber of member `F`.
fn flood(h: &mut Harness, from: Client, n: usize) {
    for i in 0..n {
        h.send(
            from,
            signal(None, "/", "com.example.I", "F"),
            &s(&format!("signal {i}")),
        );
    }
}

fn subscriber(h: &mut Harness) -> Client {
    let sub = h.client();
    h.driver(sub, "AddMatch", &s("member='F'")).expect_return();
    sub
}

#[test]
fn a_closed_queue_is_released_over_several_turns_each_within_the_budget() {
    const N: usize = 300;
    const BUDGET: usize = 64;
    let mut h = Harness::new();
    let watcher = h.client();
    h.driver(watcher, "AddMatch", &s("member='NameOwnerChanged'"))
        .expect_return();
    let (a, b) = (h.client(), h.client());
    let accounts = h.quota_accounts();
    let sub = subscriber(&mut h);
    let sub_name = h.unique(sub);
    flood(&mut h, a, N / 2);
    flood(&mut h, b, N / 2);
    h.recv_all(watcher);
    let (held_a, held_b) = (h.held(a).bytes, h.held(b).bytes);
    assert!(held_a > 0 && held_b > 0);
    let queued = h.queued_total();
    assert!(queued >= N, "{queued}");
    h.hold_reaping();
    h.disconnect(sub);
    // Observable at once: the unique name is gone.
    let noc: Vec<_> = h
        .recv_all(watcher)
        .into_iter()
        .filter(|m| m.is_driver_signal("NameOwnerChanged"))
        .collect();
    assert_eq!(noc.len(), 1);
    assert_eq!(noc[0].arg_str(0), sub_name);
    // Nothing released yet: the senders stay charged while the memory is held.
    assert!(h.reaping(), "the queue was released with the close");
    assert_eq!((h.held(a).bytes, h.held(b).bytes), (held_a, held_b));
    assert_eq!(h.queued_total(), queued);
    // Released a piece per turn, never more than the budget.
    let mut pieces = Vec::new();
    while h.reaping() {
        let released = h.reap_turn(BUDGET);
        assert!(
            released > 0 && released <= BUDGET,
            "{pieces:?} then {released}"
        );
        pieces.push(released);
    }
    assert_eq!(pieces.len(), queued.div_ceil(BUDGET), "{pieces:?}");
    assert_eq!(pieces.iter().sum::<usize>(), queued);
    assert_eq!((h.held(a).bytes, h.held(b).bytes), (0, 0));
    assert_eq!(h.user_held(USER_UID).bytes, 0);
    assert_eq!(h.queued_total(), 0);
    assert_eq!(h.quota_accounts(), accounts);
}

#[test]
fn a_gone_senders_account_lasts_until_its_messages_are_reaped() {
    let mut h = Harness::new();
    let a = h.client();
    let accounts = h.quota_accounts();
    let sub = subscriber(&mut h);
    flood(&mut h, a, 50);
    h.hold_reaping();
    h.disconnect(a);
    assert_eq!(h.quota_accounts(), accounts + 1, "a's and sub's");
    h.disconnect(sub);
    assert_eq!(
        h.quota_accounts(),
        accounts,
        "a's kept for its queued messages"
    );
    assert!(h.user_held(USER_UID).bytes > 0);
    while h.reaping() {
        assert!(h.reap_turn(8) <= 8);
    }
    assert_eq!(h.quota_accounts(), accounts - 1);
    assert_eq!(h.user_held(USER_UID).bytes, 0);
}

#[test]
fn a_sender_paused_by_a_closed_receivers_queue_resumes_once_enough_is_reaped() {
    const LIMIT: usize = 8000;
    let mut h = Harness::with_limits(&[("max_incoming_bytes", LIMIT as i64)]);
    let (a, b) = (h.client(), h.client());
    let dest = h.unique(b);
    // Twice the limit (the harness sends whether or not the reactor would read), so
    // that several pieces must be released before it is under the limit again.
    while h.held(a).bytes <= 2 * LIMIT {
        h.send(
            a,
            signal(Some(&dest), "/", "com.example.I", "S"),
            &s(&"q".repeat(200)),
        );
    }
    assert!(!h.may_read(a));
    h.hold_reaping();
    h.disconnect(b);
    // Still charged: still paused.
    assert!(h.take_resumed().is_empty());
    assert!(!h.may_read(a));
    let mut turns = 0;
    loop {
        assert!(h.reaping(), "reaped everything without resuming the sender");
        h.reap_turn(4);
        turns += 1;
        let resumed = h.take_resumed();
        if !resumed.is_empty() {
            assert_eq!(resumed, [a]);
            assert!(h.held(a).bytes <= LIMIT);
            break;
        }
        assert!(h.held(a).bytes > LIMIT, "under the limit but not resumed");
    }
    assert!(turns > 1, "resumed by the first piece");
    assert!(h.may_read(a));
    while h.reaping() {
        h.reap_turn(4);
    }
    assert!(h.take_resumed().is_empty(), "resumed once");
    assert_eq!(h.held(a).bytes, 0);
}

#[test]
fn a_new_connection_on_the_closed_ones_slot_is_unaffected_by_the_reaping() {
    let mut h = Harness::new();
    let a = h.client();
    let sub = subscriber(&mut h);
    flood(&mut h, a, 100);
    let queued = h.queued_total();
    h.hold_reaping();
    h.disconnect(sub);
    assert!(h.reaping());
    // The slot is free: the next connection takes it while the old queue is still held.
    let c = h.client();
    assert_eq!(h.slot(c), h.slot(sub), "the slot was not reused");
    h.driver(c, "AddMatch", &s("member='G'")).expect_return();
    h.recv_all(c);
    h.send(a, signal(None, "/", "com.example.I", "G"), &s("for c"));
    let held_before = h.held(a).bytes;
    assert_eq!(h.pending(c), 1);
    let mut released = 0;
    while h.reaping() {
        released += h.reap_turn(16);
        // Reaping the old queue never touches the new connection's.
        assert_eq!(h.pending(c), 1);
    }
    assert_eq!(released, queued);
    // Only c's message is still charged to a.
    assert!(h.held(a).bytes > 0 && h.held(a).bytes < held_before);
    let got = h.recv_all(c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].arg_str(0), "for c");
    assert_eq!(h.held(a).bytes, 0);
}
