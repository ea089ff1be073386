//! The server side of the SASL handshake.
//!
//! Input layout: bytes 0-1 choose a split point, the rest is what the client sends. The
//! authenticator is fed the client bytes in two calls, honouring the contract (unconsumed
//! bytes are passed again at the start of the next call), and once in a single call.
//! Properties checked: nothing panics; consumed <= offered; the chunked and one-shot runs
//! reach the same status, consume the same total and write the same replies; a finished
//! authenticator consumes nothing more and keeps its status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicebus::wire::auth::{
    AuthConfig, AuthStatus, AuthWorld, Authenticator, CookieSecret, Mechanism,
};

/// A fixed world, so runs are reproducible: one user name, one cookie, counting "random"
/// bytes restarted for each run (both runs must see the same world).
struct FuzzWorld(u8);

impl AuthWorld for FuzzWorld {
    fn random(&mut self, buf: &mut [u8]) -> bool {
        for b in buf {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
        true
    }

    fn uid_by_name(&mut self, name: &str) -> Option<u32> {
        (name == "user").then_some(1000)
    }

    fn cookie(&mut self, uid: u32, _context: &str) -> Option<CookieSecret> {
        (uid == 1000).then(|| CookieSecret {
            id: 1,
            hex: "00ff".to_owned(),
        })
    }
}

fn new_auth() -> Authenticator {
    Authenticator::new(AuthConfig {
        mechanisms: [Mechanism::External, Mechanism::Anonymous].into_iter().collect(),
        unix_fd_capable: true,
        peer_uid: Some(1000),
        guid: "0123456789abcdef0123456789abcdef".into(),
        nonce: None,
    })
}

fn finished(s: &AuthStatus) -> bool {
    !matches!(s, AuthStatus::NeedMore)
}

fuzz_target!(|data: &[u8]| {
    let (Some(&a), Some(&b)) = (data.first(), data.get(1)) else {
        return;
    };
    let input = &data[2..];
    let split = (usize::from(u16::from_le_bytes([a, b]))).min(input.len());

    // Chunked: first the prefix, then what was left over plus the rest.
    let mut chunked = new_auth();
    let mut out_c = Vec::new();
    let mut world_c = FuzzWorld(0);
    let (c1, s1) = chunked.feed(&input[..split], &mut out_c, &mut world_c);
    assert!(c1 <= split);
    let (total_c, status_c) = if finished(&s1) {
        (c1, s1)
    } else {
        let (c2, s2) = chunked.feed(&input[c1..], &mut out_c, &mut world_c);
        assert!(c2 <= input.len() - c1);
        (c1 + c2, s2)
    };

    // One shot.
    let mut whole = new_auth();
    let mut out_w = Vec::new();
    let mut world_w = FuzzWorld(0);
    let (total_w, status_w) = whole.feed(input, &mut out_w, &mut world_w);
    assert!(total_w <= input.len());

    assert_eq!(status_c, status_w, "split at {split}");
    assert_eq!(total_c, total_w, "split at {split}");
    assert_eq!(out_c, out_w, "split at {split}");

    if let AuthStatus::Authenticated(o) = &status_w {
        // Only the BEGIN line ends the handshake, so the consumed bytes end with a line.
        assert!(input[..total_w].ends_with(b"\r\n"));
        assert!(o.anonymous || o.uid == Some(1000));
        assert_eq!(o.anonymous, o.uid.is_none());
    }
    if finished(&status_w) {
        // A finished authenticator is inert.
        let rest = &input[total_w..];
        let before = out_w.len();
        let (c3, s3) = whole.feed(rest, &mut out_w, &mut world_w);
        assert_eq!(c3, 0);
        assert_eq!(s3, status_w);
        assert_eq!(out_w.len(), before);
    } else {
        // NeedMore: the unconsumed tail holds no complete line the server could act on.
        assert!(!input[total_w..].windows(2).any(|w| w == b"\r\n"));
    }
});
