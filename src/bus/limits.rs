//! OWNER: helper.
