//! The command lines of peers' processes, from `/proc`, for the bus's log lines
//! ([`ProcessInfo`]).

use crate::bus::world::{ProcessInfo, COMMAND_LINE_MAX};
use std::io::Read;

/// Reads `/proc/PID/cmdline`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcFs;

impl ProcessInfo for ProcFs {
    fn command_line(&self, pid: u32) -> Option<String> {
        let file = std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
        let mut buf = Vec::with_capacity(COMMAND_LINE_MAX);
        file.take(COMMAND_LINE_MAX as u64)
            .read_to_end(&mut buf)
            .ok()?;
        Some(command_line_of(&buf))
    }
}

/// The arguments of a `cmdline` file (each NUL-terminated) joined by spaces, as dbus-daemon
/// shows them.
fn command_line_of(raw: &[u8]) -> String {
    let trimmed = match raw.iter().rposition(|&b| b != 0) {
        Some(last) => &raw[..=last],
        None => &[],
    };
    let spaced: Vec<u8> = trimmed
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(&spaced).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_joined_by_spaces() {
        assert_eq!(
            command_line_of(b"dbus-send\0--print-reply\0"),
            "dbus-send --print-reply"
        );
        assert_eq!(command_line_of(b"a\0\0b\0"), "a  b");
        assert_eq!(command_line_of(b""), "");
        assert_eq!(command_line_of(b"\0\0"), "");
        // Cut inside an argument (the 50-byte limit): kept as is.
        assert_eq!(command_line_of(b"prog\0--addr"), "prog --addr");
    }

    #[test]
    fn our_own_command_line() {
        let me = ProcFs
            .command_line(std::process::id())
            .expect("own cmdline");
        assert!(!me.is_empty() && me.len() <= COMMAND_LINE_MAX, "{me:?}");
        assert!(ProcFs.command_line(u32::MAX).is_none());
    }
}
