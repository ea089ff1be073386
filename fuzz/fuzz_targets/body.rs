//! Signature and body validation.
//!
//! Input layout: byte 0 = signature length, byte 1 = number of fds, then the signature,
//! then the body. Properties checked: nothing panics; `is_valid_signature` agrees with an
//! independent reference validator; `validate_body` gives the same verdict in a message
//! (via `Message::parse`) as on its own, in both byte orders; a valid body's arguments can
//! be walked.
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use sluicebus::wire::body::validate_body;
use sluicebus::wire::message::Message;
use sluicebus::wire::signature::{is_single_complete_type, is_valid_signature};
use sluicebus::wire::Endian;

fuzz_target!(|data: &[u8]| {
    let (Some(&sig_len), Some(&n_fds)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let sig_len = (sig_len as usize).min(rest.len());
    let (sig, body) = rest.split_at(sig_len);
    // A message may claim only fds it came with; UNIX_FD indexes are not checked.
    let n_fds = u32::from(n_fds & 7);

    let valid = is_valid_signature(sig);
    assert_eq!(
        valid,
        reference_valid(sig),
        "signature {:?}",
        String::from_utf8_lossy(sig)
    );
    let single = is_single_complete_type(sig);
    assert!(!single || valid);
    // Also the whole input as a signature, for longer ones than one length byte allows.
    assert_eq!(is_valid_signature(data), reference_valid(data));
    if !valid {
        return;
    }
    for endian in [Endian::Little, Endian::Big] {
        let ok = validate_body(endian, sig, body).is_ok();
        let msg = wrap(endian, sig, body, n_fds);
        let parsed = Message::parse(Rc::from(msg.as_slice()), n_fds as usize);
        assert_eq!(
            parsed.is_ok(),
            ok,
            "validate_body and Message::parse disagree: {parsed:?}"
        );
        if let Ok(m) = parsed {
            assert_eq!(m.body(), body);
            assert_eq!(m.signature().as_bytes(), sig);
            for i in 0..8 {
                let _ = m.arg(i);
            }
        }
    }
});

/// A METHOD_RETURN (reply serial 1) carrying `sig`/`body` and, if non-zero, UNIX_FDS.
fn wrap(e: Endian, sig: &[u8], body: &[u8], n_fds: u32) -> Vec<u8> {
    let mut m = vec![e.mark(), 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // REPLY_SERIAL = 1
    m.extend_from_slice(&[5, 1, b'u', 0]);
    m.extend_from_slice(&e.put_u32(1));
    // SIGNATURE
    m.extend_from_slice(&[8, 1, b'g', 0, sig.len() as u8]);
    m.extend_from_slice(sig);
    m.push(0);
    if n_fds != 0 {
        while m.len() % 8 != 0 {
            m.push(0);
        }
        m.extend_from_slice(&[9, 1, b'u', 0]);
        m.extend_from_slice(&e.put_u32(n_fds));
    }
    let fields_len = (m.len() - 16) as u32;
    while m.len() % 8 != 0 {
        m.push(0);
    }
    m.extend_from_slice(body);
    let body_len = body.len() as u32;
    m[4..8].copy_from_slice(&e.put_u32(body_len));
    m[8..12].copy_from_slice(&e.put_u32(1));
    m[12..16].copy_from_slice(&e.put_u32(fields_len));
    m
}

/// Straightforward signature grammar, written independently of the crate's.
/// Nesting is counted as the crate counts it: 32 arrays, and 32 structs plus dict entries
/// together. (The public spec only limits "open parentheses"; see fuzz/README.md.)
fn reference_valid(sig: &[u8]) -> bool {
    if sig.len() > 255 {
        return false;
    }
    let mut i = 0;
    while i < sig.len() {
        match one(sig, i, 0, 0) {
            Some(j) => i = j,
            None => return false,
        }
    }
    true
}

fn basic(c: u8) -> bool {
    b"ybnqiuxtdsogh".contains(&c)
}

fn one(sig: &[u8], i: usize, arrays: u32, structs: u32) -> Option<usize> {
    let c = *sig.get(i)?;
    if basic(c) || c == b'v' {
        return Some(i + 1);
    }
    match c {
        b'a' => {
            let arrays = arrays + 1;
            if arrays > 32 {
                return None;
            }
            if sig.get(i + 1) != Some(&b'{') {
                return one(sig, i + 1, arrays, structs);
            }
            let structs = structs + 1;
            if structs > 32 || !basic(*sig.get(i + 2)?) {
                return None;
            }
            let j = one(sig, i + 3, arrays, structs)?;
            (*sig.get(j)? == b'}').then_some(j + 1)
        }
        b'(' => {
            let structs = structs + 1;
            if structs > 32 {
                return None;
            }
            let mut j = i + 1;
            let mut n = 0;
            while *sig.get(j)? != b')' {
                j = one(sig, j, arrays, structs)?;
                n += 1;
            }
            (n > 0).then_some(j + 1)
        }
        _ => None,
    }
}
