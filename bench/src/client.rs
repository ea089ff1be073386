//! A blocking D-Bus client on a raw unix socket: address parsing, `AUTH EXTERNAL`, `Hello`, and
//! buffered message I/O. One connection = one socket; no threads, no allocation per received
//! message (headers borrow from the connection's receive buffer).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::wire::{self, Header, Outgoing};

/// Whether a client waits for a reply in `poll(POLLIN)` before reading (`--poll-wait`), as
/// libdbus, GDBus and sd-bus do, instead of sleeping in a blocking `read`. A task asleep in
/// `read` on a Unix stream socket is also woken each time the bus reads what it sent (the
/// socket's space-freed wake-up shares the wait queue, and a plain read does not filter
/// it), so a blocking client adds two context switches per round trip, equal for every bus.
static POLL_WAIT: AtomicBool = AtomicBool::new(false);

/// Turns `--poll-wait` on for every connection this process makes.
pub fn set_poll_wait(on: bool) {
    POLL_WAIT.store(on, Ordering::Relaxed);
}

/// The bus driver's name, path and interface.
pub const DBUS: &str = "org.freedesktop.DBus";
/// The bus driver's object path.
pub const DBUS_PATH: &str = "/org/freedesktop/DBus";

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Decodes the `%xx` escapes of a D-Bus address value.
fn unescape(v: &str) -> io::Result<Vec<u8>> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("bad escape in address value {v:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Where to connect: a unix socket path or a Linux abstract socket name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `unix:path=…`
    Path(std::path::PathBuf),
    /// `unix:abstract=…`
    Abstract(Vec<u8>),
}

/// Picks the first connectable `unix:` entry of a D-Bus address list.
pub fn parse_address(address: &str) -> io::Result<Target> {
    use std::os::unix::ffi::OsStringExt;
    for entry in address.split(';') {
        let Some(params) = entry.strip_prefix("unix:") else {
            continue;
        };
        for kv in params.split(',') {
            match kv.split_once('=') {
                Some(("path", v)) => {
                    let p = std::ffi::OsString::from_vec(unescape(v)?);
                    return Ok(Target::Path(p.into()));
                }
                Some(("abstract", v)) => return Ok(Target::Abstract(unescape(v)?)),
                _ => {}
            }
        }
    }
    Err(invalid(format!(
        "no unix:path= or unix:abstract= entry in {address:?}"
    )))
}

/// One authenticated connection to the bus.
pub struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    /// Bytes `rbuf[start..end]` are received but not yet consumed.
    start: usize,
    end: usize,
    /// Length of the message handed out by the last `recv`, consumed on the next call.
    pending: usize,
    next_serial: u32,
    /// The unique name the bus assigned in reply to `Hello`.
    pub unique_name: String,
    wbuf: Vec<u8>,
    /// Whether `NEGOTIATE_UNIX_FD` was agreed: reads then use `recvmsg` to collect fds.
    unix_fd: bool,
    /// File descriptors received (in order) and not yet taken by [`Conn::take_fd`].
    fds: VecDeque<OwnedFd>,
}

impl Conn {
    /// Connects, authenticates with `EXTERNAL` and calls `Hello`.
    pub fn connect(address: &str) -> io::Result<Conn> {
        Conn::connect_with(address, false)
    }

    /// Like [`Conn::connect`], optionally negotiating unix fd passing during authentication.
    pub fn connect_with(address: &str, unix_fd: bool) -> io::Result<Conn> {
        let stream = match parse_address(address)? {
            Target::Path(p) => UnixStream::connect(p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                UnixStream::connect_addr(&SocketAddr::from_abstract_name(name)?)?
            }
        };
        // A wedged bus must fail the run, not hang it.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Conn::from_stream(stream);
        c.auth(unix_fd)?;
        let serial = c.call_driver("Hello", None)?;
        let h = c.recv_reply(serial)?;
        c.unique_name = wire::body_string(&h)
            .map_err(|e| invalid(format!("Hello reply: {e}")))?
            .to_owned();
        Ok(c)
    }

    /// Wraps an already-connected stream without authenticating (the no-bus `baseline` speaks
    /// D-Bus messages over a socketpair).
    pub fn from_stream(stream: UnixStream) -> Conn {
        Conn {
            stream,
            rbuf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            pending: 0,
            next_serial: 1,
            unique_name: String::new(),
            wbuf: Vec::with_capacity(4096),
            unix_fd: false,
            fds: VecDeque::new(),
        }
    }

    fn auth(&mut self, unix_fd: bool) -> io::Result<()> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let hex: String = uid
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.stream
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let line = self.read_line()?;
        if !line.starts_with("OK ") {
            return Err(invalid(format!("authentication refused: {line:?}")));
        }
        if unix_fd {
            self.stream.write_all(b"NEGOTIATE_UNIX_FD\r\n")?;
            let line = self.read_line()?;
            if line != "AGREE_UNIX_FD" {
                return Err(invalid(format!("unix fd passing refused: {line:?}")));
            }
            self.unix_fd = true;
        }
        self.stream.write_all(b"BEGIN\r\n")
    }

    /// Reads one `\r\n`-terminated SASL line; anything after it stays buffered for the
    /// message reader (a bus may not send any, but nothing forbids it).
    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.rbuf[self.start..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = String::from_utf8_lossy(&self.rbuf[self.start..self.start + i]);
                let line = line.into_owned();
                self.start += i + 2;
                return Ok(line);
            }
            if self.end - self.start > 4096 {
                return Err(invalid("SASL line too long"));
            }
            self.fill()?;
        }
    }

    /// Reads more bytes into the buffer, compacting or growing it as needed.
    fn fill(&mut self) -> io::Result<()> {
        if POLL_WAIT.load(Ordering::Relaxed) {
            self.wait_readable()?;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.rbuf.len() {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.rbuf.len() {
            let n = self.rbuf.len() * 2;
            self.rbuf.resize(n, 0);
        }
        let n = if self.unix_fd {
            let end = self.end;
            self.read_with_fds(end)?
        } else {
            self.stream.read(&mut self.rbuf[self.end..])?
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "bus closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Sleeps in `poll(POLLIN)` until the socket has something to read (`--poll-wait`).
    fn wait_readable(&self) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut pfd, 1, -1) } >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// `recvmsg` into `rbuf[at..]`, queueing any `SCM_RIGHTS` descriptors.
    fn read_with_fds(&mut self, at: usize) -> io::Result<usize> {
        // Room for 16 descriptors per read; the benchmark sends one per message.
        const CMSG_SPACE: usize = 128;
        let mut cbuf = [0u64; CMSG_SPACE / 8];
        let buf = &mut self.rbuf[at..];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_SPACE as _;
        // SAFETY: msg points at valid buffers of the stated lengths.
        let n = unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: walking the control buffer the kernel just filled, with the libc macros.
        unsafe {
            let mut cm = libc::CMSG_FIRSTHDR(&msg);
            while !cm.is_null() {
                if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cm).cast::<libc::c_int>();
                    let bytes = (*cm).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                        let fd = data.add(i).read_unaligned();
                        self.fds.push_back(OwnedFd::from_raw_fd(fd));
                    }
                }
                cm = libc::CMSG_NXTHDR(&msg, cm);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(invalid("file descriptors truncated (MSG_CTRUNC)"));
        }
        Ok(n as usize)
    }

    /// Turns on fd-collecting reads without a SASL exchange (socketpair tests).
    #[cfg(test)]
    pub fn set_unix_fd_for_test(&mut self) {
        self.unix_fd = true;
    }

    /// The oldest received file descriptor not yet taken.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Sends already-encoded bytes with `fd` attached (`SCM_RIGHTS`) to the first byte.
    pub fn send_raw_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut cbuf = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure computations; the header fits in 32 bytes.
        let n = unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(4) as _;
            let cm = libc::CMSG_FIRSTHDR(&msg);
            (*cm).cmsg_level = libc::SOL_SOCKET;
            (*cm).cmsg_type = libc::SCM_RIGHTS;
            (*cm).cmsg_len = libc::CMSG_LEN(4) as _;
            libc::CMSG_DATA(cm)
                .cast::<libc::c_int>()
                .write_unaligned(fd.as_raw_fd());
            libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // The descriptor went with the first chunk; the rest is plain bytes.
        self.stream.write_all(&bytes[n as usize..])
    }

    /// Encodes `m` (with a fresh serial) and sends it with `fd` attached; returns the serial.
    pub fn send_with_fd(
        &mut self,
        m: Outgoing<'_>,
        body: &[u8],
        fd: BorrowedFd<'_>,
    ) -> io::Result<u32> {
        let serial = self.serial();
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        wire::encode(&mut buf, &Outgoing { serial, ..m }, body);
        let r = self.send_raw_with_fd(&buf, fd);
        self.wbuf = buf;
        r.map(|()| serial)
    }

    /// Allocates the next serial.
    pub fn serial(&mut self) -> u32 {
        let s = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        s
    }

    /// Sends one message; returns its serial.
    pub fn send(&mut self, m: Outgoing<'_>, body: &[u8]) -> io::Result<u32> {
        let serial = self.serial();
        self.wbuf.clear();
        wire::encode(&mut self.wbuf, &Outgoing { serial, ..m }, body);
        self.stream.write_all(&self.wbuf)?;
        Ok(serial)
    }

    /// Makes writes that block longer than `d` fail (`None`: block as long as it takes).
    pub fn set_write_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(d)
    }

    /// Sends already-encoded bytes (a batch of messages).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Calls a bus driver method with an optional single string argument.
    pub fn call_driver(&mut self, member: &str, arg: Option<&str>) -> io::Result<u32> {
        let mut body = Vec::new();
        if let Some(a) = arg {
            wire::push_string(&mut body, a);
        }
        self.send(
            driver_call(member, if arg.is_some() { "s" } else { "" }),
            &body,
        )
    }

    /// Receives the next message. The header borrows the receive buffer until the next call.
    pub fn recv(&mut self) -> io::Result<Header<'_>> {
        self.start += self.pending;
        self.pending = 0;
        let len = loop {
            let avail = self.end - self.start;
            if avail >= wire::FIXED_HEADER {
                let len = wire::message_len(&self.rbuf[self.start..self.end])
                    .map_err(|e| invalid(e.to_string()))?;
                if avail >= len {
                    break len;
                }
                if self.rbuf.len() - self.start < len {
                    // The message does not fit behind `start`: compact, then grow.
                    self.rbuf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    if self.rbuf.len() < len {
                        self.rbuf.resize(len, 0);
                    }
                }
            }
            self.fill()?;
        };
        self.pending = len;
        wire::parse(&self.rbuf[self.start..self.start + len]).map_err(|e| invalid(e.to_string()))
    }

    /// Whether a whole message beyond the last one handed out is already buffered, so that
    /// [`Conn::recv`] returns without reading the socket.
    pub fn has_message(&self) -> bool {
        let start = self.start + self.pending;
        let Some(buf) = self.rbuf.get(start..self.end) else {
            return false;
        };
        buf.len() >= wire::FIXED_HEADER && wire::message_len(buf).is_ok_and(|len| buf.len() >= len)
    }

    /// The socket, for `poll`.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.stream.as_raw_fd()
    }

    /// Receives until the reply to `serial` arrives (skipping signals such as `NameAcquired`);
    /// an `ERROR` reply becomes an `io::Error`.
    pub fn recv_reply(&mut self, serial: u32) -> io::Result<Header<'_>> {
        loop {
            let h = self.recv()?;
            if h.reply_serial == serial {
                if h.msg_type == wire::ERROR {
                    // The error's message, when it has one, says why (e.g. which argument).
                    let text = if h.signature.starts_with('s') {
                        wire::body_string(&h)
                            .map(|t| format!(": {t}"))
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    return Err(io::Error::other(format!(
                        "call {serial} failed: {}{text}",
                        h.error_name
                    )));
                }
                // Re-borrow to satisfy the borrow checker: the same bytes, parsed again.
                break;
            }
        }
        let len = self.pending;
        wire::parse(&self.rbuf[self.start..self.start + len]).map_err(|e| invalid(e.to_string()))
    }

    /// Becomes the primary owner of well-known name `name` (`RequestName` with
    /// `DO_NOT_QUEUE`); anything but "primary owner" is an error.
    pub fn request_name(&mut self, name: &str) -> io::Result<()> {
        let mut body = Vec::new();
        wire::push_string(&mut body, name);
        wire::push_u32(&mut body, 4); // DBUS_NAME_FLAG_DO_NOT_QUEUE
        let serial = self.send(driver_call("RequestName", "su"), &body)?;
        let h = self.recv_reply(serial)?;
        match wire::BodyReader::new(&h).u32() {
            Ok(1) => Ok(()),
            Ok(r) => Err(io::Error::other(format!(
                "RequestName {name}: reply {r}, not 1 (primary owner)"
            ))),
            Err(e) => Err(invalid(format!("RequestName reply: {e}"))),
        }
    }

    /// Installs `rules` with pipelined `AddMatch` calls, `batch` per write, and waits for every
    /// reply, so the rules are known to be active when this returns.
    pub fn add_matches(&mut self, rules: &[String], batch: usize) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut body = Vec::new();
        for chunk in rules.chunks(batch.max(1)) {
            buf.clear();
            let mut serials = Vec::with_capacity(chunk.len());
            for rule in chunk {
                body.clear();
                wire::push_string(&mut body, rule);
                let serial = self.serial();
                serials.push(serial);
                wire::encode(
                    &mut buf,
                    &Outgoing {
                        serial,
                        ..driver_call("AddMatch", "s")
                    },
                    &body,
                );
            }
            self.stream.write_all(&buf)?;
            for s in serials {
                self.recv_reply(s)?;
            }
        }
        Ok(())
    }
}

/// A method call on the bus driver.
pub fn driver_call<'a>(member: &'a str, signature: &'a str) -> Outgoing<'a> {
    Outgoing {
        msg_type: wire::METHOD_CALL,
        path: DBUS_PATH,
        interface: DBUS,
        member,
        destination: DBUS,
        signature,
        ..Outgoing::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        assert_eq!(
            parse_address("unix:path=/tmp/a%20b,guid=0123").unwrap(),
            Target::Path("/tmp/a b".into())
        );
        assert_eq!(
            parse_address("tcp:host=x,port=1;unix:abstract=/tmp/dbus-x").unwrap(),
            Target::Abstract(b"/tmp/dbus-x".to_vec())
        );
        assert!(parse_address("tcp:host=localhost,port=1").is_err());
        assert!(parse_address("unix:path=/bad%2").is_err());
        assert!(parse_address("unix:path=/bad%zz").is_err());
        assert!(parse_address("").is_err());
    }

    #[test]
    fn conn_handshake_and_reads_against_fake_bus() {
        // A fake bus on a socketpair: checks the client's bytes and answers Hello with a reply
        // split across writes, preceded by a NameAcquired signal, to exercise buffering.
        let (client, mut server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut b = [0u8; 512];
            let mut read_until = |got: &mut Vec<u8>, server: &mut UnixStream, pat: &[u8]| {
                while !got.windows(pat.len()).any(|w| w == pat) {
                    let n = server.read(&mut b).unwrap();
                    assert!(n > 0, "client hung up");
                    got.extend_from_slice(&b[..n]);
                }
            };
            read_until(&mut got, &mut server, b"\r\n");
            let uid = unsafe { libc::geteuid() }.to_string();
            let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes());
            server
                .write_all(b"OK 0123456789abcdef0123456789abcdef\r\n")
                .unwrap();
            // BEGIN, then Hello pipelined behind it; read all of it so closing the socket later
            // is a clean EOF for the client rather than a reset.
            let mut hello = b"BEGIN\r\n".to_vec();
            wire::encode(
                &mut hello,
                &Outgoing {
                    serial: 1,
                    ..driver_call("Hello", "")
                },
                &[],
            );
            read_until(&mut got, &mut server, &hello);
            let mut msgs = Vec::new();
            let mut body = Vec::new();
            wire::push_string(&mut body, ":1.42");
            let sig = Outgoing {
                msg_type: wire::SIGNAL,
                serial: 1,
                path: DBUS_PATH,
                interface: DBUS,
                member: "NameAcquired",
                signature: "s",
                ..Outgoing::default()
            };
            wire::encode(&mut msgs, &sig, &body);
            let ret = Outgoing {
                msg_type: wire::METHOD_RETURN,
                serial: 2,
                reply_serial: 1,
                signature: "s",
                ..Outgoing::default()
            };
            wire::encode(&mut msgs, &ret, &body);
            let (a, b2) = msgs.split_at(msgs.len() - 5);
            server.write_all(a).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            server.write_all(b2).unwrap();
            server
        });
        let mut c = Conn::from_stream(client);
        c.rbuf = vec![0; 16]; // tiny on purpose: forces compaction and growth
        c.auth(false).unwrap();
        let s = c.call_driver("Hello", None).unwrap();
        assert_eq!(s, 1);
        let h = c.recv_reply(s).unwrap();
        assert_eq!(wire::body_string(&h).unwrap(), ":1.42");
        let server = t.join().unwrap();
        drop(server);
        assert_eq!(c.recv().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn garbage_from_bus_is_an_error() {
        let (client, mut server) = UnixStream::pair().unwrap();
        server
            .write_all(b"X\x01\x00\x01\0\0\0\0\x01\0\0\0\0\0\0\0")
            .unwrap();
        let mut c = Conn::from_stream(client);
        c.rbuf = vec![0; 64];
        assert_eq!(c.recv().unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
