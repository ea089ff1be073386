//! OWNER: config helper.
