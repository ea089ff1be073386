//! Signature validation (spec "Valid Signatures"): at most 255 bytes, complete types only,
//! 32 array and 32 struct nesting levels, dict entries only directly in arrays.
//!
//! OWNER: wire helper.

/// Maximum signature length.
pub const MAX_SIGNATURE_LEN: usize = 255;

/// Whether `sig` is a valid signature (zero or more complete types).
pub fn is_valid_signature(sig: &[u8]) -> bool {
    let _ = sig;
    todo!()
}

/// Whether `sig` is exactly one complete type (as a variant's signature must be).
pub fn is_single_complete_type(sig: &[u8]) -> bool {
    let _ = sig;
    todo!()
}
