//! A small blocking D-Bus client for the command-line tools (`sluicebus-container`,
//! `sluicebus-dbus-proxy`): connect to a `unix:` bus address, authenticate with EXTERNAL,
//! say Hello, and call the bus driver (with unix fds if asked). Not used by the daemon.

use crate::wire::address::{parse_listen, ListenAddress};
use crate::wire::marshal::{BodyReader, BodyWriter, MessageBuilder};
use crate::wire::message::{frame_len, Message, FIXED_HEADER_LEN, MAX_MESSAGE_SIZE};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
/// How long a method call may take before we give up (libdbus uses 25 s too).
const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Why a bus conversation failed.
#[derive(Debug)]
pub enum ClientError {
    /// The bus answered with an error.
    Bus {
        /// D-Bus error name.
        name: String,
        /// Its message text ("" if none).
        text: String,
    },
    /// Anything else (I/O, protocol, authentication).
    Other(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Bus { name, text } if text.is_empty() => write!(f, "{name}"),
            ClientError::Bus { name, text } => write!(f, "{name}: {text}"),
            ClientError::Other(s) => f.write_str(s),
        }
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Other(format!("{what}: {e}"))
}

pub fn connect(address: &str) -> Result<UnixStream, ClientError> {
    let entries = parse_listen(address).map_err(|e| other("bad bus address", e))?;
    let mut last = None;
    for e in entries {
        let r = match e {
            ListenAddress::UnixPath(p) => UnixStream::connect(&p),
            ListenAddress::UnixAbstract(name) => connect_abstract(&name),
            _ => continue,
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => other(&format!("cannot connect to {address}"), e),
        None => ClientError::Other(format!(
            "{address}: only unix:path= and unix:abstract= addresses are supported"
        )),
    })
}

#[cfg(target_os = "linux")]
fn connect_abstract(name: &[u8]) -> std::io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    UnixStream::connect_addr(&addr)
}

#[cfg(not(target_os = "linux"))]
fn connect_abstract(_name: &[u8]) -> std::io::Result<UnixStream> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// A blocking client connection to the bus that can pass descriptors.
pub struct Conn {
    stream: UnixStream,
    /// Received bytes not yet framed into messages.
    buf: Vec<u8>,
    serial: u32,
}

impl Conn {
    /// Connect, authenticate with EXTERNAL as our uid, with `fds` negotiate fd passing (D-Bus
    /// specification, "Authentication protocol": NEGOTIATE_UNIX_FD before BEGIN; fails if
    /// the bus does not agree), and say Hello.
    pub fn open(address: &str, fds: bool) -> Result<Conn, ClientError> {
        let mut stream = connect(address)?;
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(|e| other("socket", e))?;
        let uid = nix::unistd::getuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        stream
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
            .map_err(|e| other("authentication", e))?;
        let line = read_line(&mut stream)?;
        if !line.starts_with("OK ") {
            return Err(ClientError::Other(format!(
                "the bus refused authentication: {line:?}"
            )));
        }
        if fds {
            stream
                .write_all(b"NEGOTIATE_UNIX_FD\r\n")
                .map_err(|e| other("authentication", e))?;
            let line = read_line(&mut stream)?;
            if line != "AGREE_UNIX_FD" {
                return Err(ClientError::Other(format!(
                    "the bus does not pass file descriptors ({line:?})"
                )));
            }
        }
        stream
            .write_all(b"BEGIN\r\n")
            .map_err(|e| other("authentication", e))?;
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            serial: 0,
        };
        c.call(DBUS_PATH, DBUS, "Hello", &BodyWriter::new(), &[])?;
        Ok(c)
    }

    /// The connection's socket (to poll it for the bus going away).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Call a method of the bus driver, passing `fds` along; return its METHOD_RETURN or
    /// its error. Other messages arriving meanwhile are dropped.
    pub fn call(
        &mut self,
        path: &str,
        iface: &str,
        member: &str,
        body: &BodyWriter,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Message, ClientError> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let serial = self.serial;
        let n_fds = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        let bytes = MessageBuilder::method_call(path, Some(iface), member)
            .destination(DBUS)
            .flags(0)
            .unix_fds(n_fds)
            .build(serial, body);
        self.send(&bytes, fds)
            .map_err(|e| other(&format!("sending {member}"), e))?;
        loop {
            let msg = match self.next_buffered()? {
                Some(m) => m,
                None => {
                    if !self.fill()? {
                        return Err(ClientError::Other(format!(
                            "the bus closed the connection during {member}"
                        )));
                    }
                    continue;
                }
            };
            if msg.reply_serial != Some(serial) {
                continue;
            }
            match msg.msg_type {
                2 => return Ok(msg),
                3 => {
                    let name = msg.error_name().unwrap_or("(unnamed error)").to_string();
                    let text = BodyReader::new(&msg)
                        .str()
                        .map(str::to_string)
                        .unwrap_or_default();
                    return Err(ClientError::Bus { name, text });
                }
                _ => continue,
            }
        }
    }

    /// Write one message; the descriptors ride with its first byte (D-Bus specification,
    /// "Message Format": UNIX_FDS).
    pub fn send(
        &mut self,
        bytes: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        let mut rest = bytes;
        if !fds.is_empty() {
            let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let cmsgs = [ControlMessage::ScmRights(&raw)];
            let n = loop {
                match sendmsg::<()>(
                    self.stream.as_raw_fd(),
                    &[IoSlice::new(rest)],
                    &cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                ) {
                    Ok(n) => break n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            rest = rest.get(n..).unwrap_or_default();
        }
        self.stream.write_all(rest)
    }

    /// One read() into the buffer. False on end-of-file.
    pub fn fill(&mut self) -> Result<bool, ClientError> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(other("reading from the bus", e)),
        }
    }

    /// Split the next complete message off the buffer, if there is one.
    pub fn next_buffered(&mut self) -> Result<Option<Message>, ClientError> {
        let Some(fixed) = self
            .buf
            .get(..FIXED_HEADER_LEN)
            .and_then(|s| <&[u8; FIXED_HEADER_LEN]>::try_from(s).ok())
        else {
            return Ok(None);
        };
        let len = frame_len(fixed, MAX_MESSAGE_SIZE).map_err(|e| other("bad message", e))?;
        if self.buf.len() < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(len);
        let data: Rc<[u8]> = std::mem::replace(&mut self.buf, rest).into();
        Message::parse(data, 0)
            .map(Some)
            .map_err(|e| other("bad message", e))
    }
}

/// Read one CRLF-terminated auth line byte by byte, so nothing after it is consumed.
pub fn read_line(stream: &mut UnixStream) -> Result<String, ClientError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() > 16384 {
            return Err(ClientError::Other("authentication line too long".into()));
        }
        match stream.read(&mut b) {
            Ok(0) => {
                return Err(ClientError::Other(
                    "the bus closed during authentication".into(),
                ))
            }
            Ok(_) => line.extend_from_slice(&b),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(other("authentication", e)),
        }
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsupported_addresses() {
        assert!(
            matches!(connect("tcp:host=localhost,port=1"), Err(ClientError::Other(m)) if m.contains("only unix"))
        );
        assert!(
            matches!(connect("garbage"), Err(ClientError::Other(m)) if m.contains("bad bus address"))
        );
        assert!(connect("unix:path=/nonexistent/sluicebus-test/bus").is_err());
    }
}
