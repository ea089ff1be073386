//! Body validation: one pass over the body against its signature, without copying.
//!
//! OWNER: wire helper.

use super::{Endian, WireError};

/// Validate `body` against `signature` (already known valid): alignment padding zero,
/// strings valid UTF-8 without interior NUL, object paths and signatures valid, booleans 0/1,
/// array lengths within 64 MiB and ending on an element boundary, variants holding exactly
/// one complete type, total depth <= 64, UNIX_FD indexes < `n_fds`, no trailing bytes.
/// Offsets are relative to the body start, which is 8-aligned in the message.
pub fn validate_body(
    endian: Endian,
    signature: &[u8],
    body: &[u8],
    n_fds: u32,
) -> Result<(), WireError> {
    let _ = (endian, signature, body, n_fds);
    todo!()
}
