//! OWNER: auth/address helper.
