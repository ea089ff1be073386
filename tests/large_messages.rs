//! Messages longer than one socket read: the bus receives them straight into their own
//! buffer once the fixed header gives the length. These tests check that the bytes arrive
//! intact whatever the read boundaries, that the message after a large one is not lost,
//! that an unfinished large message hurts nobody else, and that the size limit still holds.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

/// A string of `len` printable bytes that differ along the way, so a shifted or repeated
/// chunk shows up as a mismatch.
fn pattern(len: usize, seed: u8) -> String {
    (0..len)
        .map(|i| (b'a' + ((i / 7 + i * 31 + seed as usize) % 26) as u8) as char)
        .collect()
}

/// A fire-and-forget method call from `from` to `to` carrying `body` (serial `serial`).
fn call_bytes(to: &str, member: &str, serial: u32, body: &str) -> Vec<u8> {
    let args = [s(body)];
    build_message(&MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        flags: 1, // NO_REPLY_EXPECTED
        serial,
        path: Some("/large"),
        interface: Some("org.example.Large"),
        member: Some(member),
        destination: Some(to),
        args: &args,
        ..Default::default()
    })
}

/// Bytes written to `c` that the bus has not read yet (SIOCOUTQ: for a unix socket, what the
/// peer has not consumed).
fn unread_by_bus(c: &RawConn) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer we pass.
    let r = unsafe { libc::ioctl(c.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    usize::try_from(n).unwrap_or(0)
}

/// Write `bytes` in pieces of the given sizes (the last size repeats); the first pieces
/// each wait until the bus has read them, so it sees separate reads that split messages at
/// odd places.
fn send_in_pieces(c: &mut RawConn, bytes: &[u8], sizes: &[usize]) {
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = sizes[i.min(sizes.len() - 1)].min(bytes.len() - pos);
        c.stream
            .write_all(&bytes[pos..pos + n])
            .expect("write piece");
        c.stream.flush().ok();
        pos += n;
        i += 1;
        if i < 6 {
            assert!(
                eventually(TIMEOUT, || unread_by_bus(c) == 0),
                "the bus did not read piece {i}"
            );
        }
    }
}

fn recv_member(c: &mut RawConn, member: &str) -> RawMsg {
    let (_, got) = c.recv_until(Duration::from_secs(20), |m| {
        m.member.as_deref() == Some(member)
    });
    got.unwrap_or_else(|| panic!("{member} never arrived"))
}

#[test]
fn large_message_arrives_intact_between_small_ones() {
    let mut bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let to = b.unique().to_string();
    let big = pattern(3 << 20, 1);
    let mut stream = call_bytes(&to, "Before", 1001, "small before");
    stream.extend(call_bytes(&to, "Big", 1002, &big));
    stream.extend(call_bytes(&to, "After", 1003, "small after"));
    // Odd sizes: the first read holds the small message and the start of the big one, a
    // later piece ends inside the big one's header, the last one carries its tail together
    // with the small message behind it.
    send_in_pieces(&mut a, &stream, &[300, 5, 70_001, 4093, 1 << 20]);

    let m = recv_member(&mut b, "Before");
    assert_eq!(m.arg_str(0), "small before");
    let m = recv_member(&mut b, "Big");
    assert_eq!(m.sender.as_deref(), Some(a.unique()));
    assert!(m.arg_str(0) == big, "large body corrupted in transit");
    let m = recv_member(&mut b, "After");
    assert_eq!(m.arg_str(0), "small after");
    bus.assert_alive();
}

/// Messages shorter than one read but cut by read boundaries: a short cut-off start is put
/// in front of the next read's bytes, a longer one (over 2 KiB) is gathered apart until its
/// message is complete. Both arrive intact, in order, with what follows them.
#[test]
fn small_messages_cut_at_odd_places_arrive_intact() {
    let mut bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let to = b.unique().to_string();
    let bodies = [
        pattern(100, 5),
        pattern(10_000, 6),
        pattern(3_000, 7),
        pattern(20_000, 8),
    ];
    let mut stream = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        stream.extend(call_bytes(&to, &format!("M{i}"), 4001 + i as u32, body));
    }
    // Cut inside the first message's header, inside the second's body several times (its
    // start grows past 2 KiB a piece at a time), then across the third and fourth.
    send_in_pieces(&mut a, &stream, &[150, 3, 1500, 1200, 4000, 1, 9000]);
    for (i, body) in bodies.iter().enumerate() {
        let m = recv_member(&mut b, &format!("M{i}"));
        assert_eq!(m.sender.as_deref(), Some(a.unique()));
        assert!(m.arg_str(0) == *body, "body of M{i} corrupted in transit");
    }
    bus.assert_alive();
}

#[test]
fn back_to_back_large_messages_in_one_write() {
    let mut bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let to = b.unique().to_string();
    let (x, y) = (pattern(200_000, 2), pattern(1 << 20, 3));
    let mut stream = call_bytes(&to, "X", 2001, &x);
    stream.extend(call_bytes(&to, "Y", 2002, &y));
    a.stream.write_all(&stream).expect("write");
    assert!(
        recv_member(&mut b, "X").arg_str(0) == x,
        "first large body corrupted"
    );
    assert!(
        recv_member(&mut b, "Y").arg_str(0) == y,
        "second large body corrupted"
    );
    bus.assert_alive();
}

#[test]
fn unfinished_large_message_harms_nobody_else() {
    let mut bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let mut c = bus.client();
    let to = b.unique().to_string();
    b.watch_departures();
    let big = call_bytes(&to, "Never", 3001, &pattern(2 << 20, 4));
    // Announce 2 MiB, send 100 KiB of it, then hang up (the bus reads the bytes before the
    // end of file, whenever it gets to them).
    a.stream.write_all(&big[..100_000]).expect("write");
    let a_name = a.unique().to_string();
    drop(a);
    // Once the bus announces a gone it has handled all a sent.
    let (mut seen, gone) = b.next_departure();
    assert_eq!(gone, a_name);
    // Others carry on; the half message is never delivered.
    let to_b = b.unique().to_string();
    let s1 = c.call(Some(&to_b), "/", Some("org.example.I"), "Ping", &[]);
    let (more, m) = b.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Ping"));
    assert_eq!(m.expect("Ping never arrived").serial, s1);
    seen.extend(more);
    seen.extend(b.sync());
    assert!(
        !seen.iter().any(|m| m.member.as_deref() == Some("Never")),
        "a truncated message was delivered"
    );
    bus.assert_alive();
}

#[test]
fn size_limit_applies_to_large_messages() {
    let mut bus = TestBus::with_limits(&[("max_message_size", 100_000)]);
    let mut a = bus.client();
    let mut b = bus.client();
    let to = b.unique().to_string();
    // Longer than one read but within the limit: relayed.
    let ok = pattern(90_000, 5);
    a.stream
        .write_all(&call_bytes(&to, "Fits", 4001, &ok))
        .expect("write");
    assert!(recv_member(&mut b, "Fits").arg_str(0) == ok);
    // Over the limit: the sender is disconnected as soon as the header is read.
    let over = call_bytes(&to, "TooBig", 4002, &pattern(200_000, 6));
    let _ = a.stream.write_all(&over[..70_000]);
    // The close means the bus is done with a; anything it relayed precedes b's sync reply.
    assert!(a.closed_within(Duration::from_secs(5)));
    b.assert_none_before_sentinel("an oversized message was delivered", |m| {
        m.member.as_deref() == Some("TooBig")
    });
    bus.assert_alive();
}
