//! Routing: unicast, replies, SENDER stamping, broadcasts, reply tracking.

use super::harness::*;

#[test]
fn smoke() {
    let mut h = Harness::new();
    let a = h.client();
    let b = h.client();
    let bn = h.unique(b);
    let serial = h.call(a, &bn, "/o", "com.example.I", "M", &s("x"));
    let m = h.recv(b).unwrap();
    assert_eq!(m.serial, serial);
    assert_eq!(m.sender, Some(h.unique(a)));
}
