//! Framing, header/body validation and relaying of arbitrary bytes as one D-Bus message.
//!
//! Properties checked: nothing panics; a parsed message's accessors are consistent with its
//! bytes; relaying a valid message (both the zero-copy splice and the rebuilt header, with and
//! without a container instance) yields a message that parses again and keeps every field the
//! bus does not own; a connection's header cache, primed with the message or with it one
//! byte changed (so hits, misses and REPLY_SERIAL patches), changes no verdict or field.
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use sluicebus::wire::message::{
    declared_fds, frame_len, Arg, HeaderCache, Message, RelayHeader, FIXED_HEADER_LEN,
};
use sluicebus::wire::Endian;

const CONTAINER: &str = "/org/freedesktop/DBus/Containers1/c1";

fuzz_target!(|data: &[u8]| {
    // Must never panic, whatever the length.
    let _ = Message::parse(Rc::from(data), 0);

    let Some(fixed) = data
        .get(..FIXED_HEADER_LEN)
        .and_then(|s| <&[u8; FIXED_HEADER_LEN]>::try_from(s).ok())
    else {
        return;
    };
    let Ok(total) = frame_len(fixed, 1 << 27) else {
        return;
    };
    if total == data.len() {
        parse_and_check(data);
        check_cache(data);
    } else if let Some(patched) = fix_body_len(data) {
        // Mutations that insert or delete bytes break the declared length, which would
        // make almost every mutant bounce off frame_len; patch it so the body is reached.
        parse_and_check(&patched);
        check_cache(&patched);
    }
});

/// `data` with BODY_LENGTH rewritten to match its actual size, if the header fits.
fn fix_body_len(data: &[u8]) -> Option<Vec<u8>> {
    let endian = Endian::from_mark(*data.first()?)?;
    let w = data.get(12..16)?;
    let fields_len = endian.u32([w[0], w[1], w[2], w[3]]) as usize;
    let body_start = (FIXED_HEADER_LEN + fields_len + 7) & !7;
    let body_len = u32::try_from(data.len().checked_sub(body_start)?).ok()?;
    let mut v = data.to_vec();
    v[4..8].copy_from_slice(&endian.put_u32(body_len));
    Some(v)
}

fn parse_and_check(data: &[u8]) {
    let rc: Rc<[u8]> = Rc::from(data);
    let n = declared_fds(data).unwrap_or(0) as usize;
    if n != 0 {
        // Fewer fds than declared must be refused, never accepted.
        assert!(Message::parse(Rc::clone(&rc), 0).is_err());
    }
    if let Ok(m) = Message::parse(rc, n) {
        exercise(&m, data);
        check_relay(&m, None);
        check_relay(&m, Some(CONTAINER));
    }
}

/// A [`HeaderCache`] changes nothing: `data` and a variant with one byte after the fixed
/// header changed, each parsed after either of them primed the cache (a hit when the header
/// fields are the same, REPLY_SERIAL's value aside; else a miss), parse as without a cache.
fn check_cache(data: &[u8]) {
    let len = data.len();
    let Some(&last) = data.last() else {
        return;
    };
    let mut variant = data.to_vec();
    if len > FIXED_HEADER_LEN {
        let i = FIXED_HEADER_LEN + (len * 31 + usize::from(last)) % (len - FIXED_HEADER_LEN);
        variant[i] ^= 1 << (len % 8);
    }
    let msgs: [Rc<[u8]>; 2] = [Rc::from(data), Rc::from(variant)];
    for m in &msgs {
        let n = declared_fds(m).unwrap_or(0) as usize;
        let plain = Message::parse_framed(Rc::clone(m), 0..len, n);
        for primer in &msgs {
            let mut cache = HeaderCache::default();
            let _ = Message::parse_framed_cached(Rc::clone(primer), 0..len, n, &mut cache);
            for _ in 0..2 {
                let cached = Message::parse_framed_cached(Rc::clone(m), 0..len, n, &mut cache);
                match (&plain, &cached) {
                    (Ok(a), Ok(b)) => same_message(a, b),
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    _ => panic!("cache changed the verdict: {plain:?} / {cached:?}"),
                }
            }
        }
    }
}

/// Every field of two parses of the same bytes agrees, relaying included.
fn same_message(a: &Message, b: &Message) {
    assert_eq!(a.data(), b.data());
    assert_eq!(a.endian, b.endian);
    assert_eq!(a.msg_type, b.msg_type);
    assert_eq!(a.flags, b.flags);
    assert_eq!(a.serial, b.serial);
    assert_eq!(a.reply_serial, b.reply_serial);
    assert_eq!(a.unix_fds, b.unix_fds);
    assert_eq!(a.path(), b.path());
    assert_eq!(a.interface(), b.interface());
    assert_eq!(a.member(), b.member());
    assert_eq!(a.error_name(), b.error_name());
    assert_eq!(a.destination(), b.destination());
    assert_eq!(a.signature(), b.signature());
    assert_eq!(a.body_range(), b.body_range());
    assert_eq!(
        assemble(a, &a.relay_header(":1.5", None)),
        assemble(b, &b.relay_header(":1.5", None))
    );
}

fn exercise(m: &Message, data: &[u8]) {
    assert_eq!(&m.data()[..], data);
    assert!(m.msg_type != 0);
    assert!(m.serial != 0);
    assert_eq!(m.endian.mark(), data[0]);
    assert_eq!(m.flags, data[2]);
    let r = m.body_range();
    assert_eq!(r.start % 8, 0);
    assert!(r.start <= data.len() && r.end == data.len());
    assert_eq!(m.body(), &data[r]);
    let _ = (
        m.no_reply_expected(),
        m.no_auto_start(),
        m.reply_serial,
        m.unix_fds,
    );
    for s in [
        m.path(),
        m.interface(),
        m.member(),
        m.error_name(),
        m.destination(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!s.is_empty());
    }
    let sig = m.signature();
    assert!(m.body().is_empty() || !sig.is_empty());
    let mut prev_some = true;
    for i in 0..4 {
        let a = m.arg(i);
        // Arguments are a prefix: once one is missing, none follows.
        assert!(prev_some || a.is_none());
        prev_some = a.is_some();
        if let Some(Arg::Path(p)) = a {
            assert!(p.starts_with('/'));
        }
    }
}

/// Header + body as a relayed message would go on the wire.
fn assemble(m: &Message, h: &RelayHeader) -> Vec<u8> {
    let mut out = Vec::new();
    match h {
        RelayHeader::Splice {
            fixed,
            middle,
            tail,
        } => {
            out.extend_from_slice(fixed);
            out.extend_from_slice(&m.data()[middle.start as usize..middle.end as usize]);
            out.extend_from_slice(tail);
        }
        RelayHeader::Rebuilt(v) => out.extend_from_slice(v),
    }
    assert_eq!(out.len() % 8, 0, "relayed header not padded to 8");
    out.extend_from_slice(m.body());
    out
}

fn check_relay(m: &Message, container: Option<&str>) {
    let h = m.relay_header(":1.5", container);
    let bytes = assemble(m, &h);
    let r = match Message::parse(Rc::from(bytes.as_slice()), m.unix_fds as usize) {
        Ok(r) => r,
        Err(e) => panic!(
            "relayed message does not parse: {e:?}\noriginal {:02x?}\nrelayed  {:02x?}",
            &m.data()[..],
            bytes
        ),
    };
    assert_eq!(r.endian, m.endian);
    assert_eq!(r.msg_type, m.msg_type);
    assert_eq!(r.flags, m.flags);
    assert_eq!(r.serial, m.serial);
    assert_eq!(r.reply_serial, m.reply_serial);
    assert_eq!(r.unix_fds, m.unix_fds);
    assert_eq!(r.path(), m.path());
    assert_eq!(r.interface(), m.interface());
    assert_eq!(r.member(), m.member());
    assert_eq!(r.error_name(), m.error_name());
    assert_eq!(r.destination(), m.destination());
    assert_eq!(r.signature(), m.signature());
    assert_eq!(r.body(), m.body());
    for i in 0..4 {
        assert_eq!(r.arg(i), m.arg(i));
    }
    // Relaying an already relayed message (it now carries SENDER, so the rebuild path)
    // must be stable too.
    let again = assemble(&r, &r.relay_header(":1.5", container));
    assert_eq!(again, bytes, "re-relaying changed the message");
}
