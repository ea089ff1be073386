//! Authentication as users meet it beyond EXTERNAL on a unix socket: DBUS_COOKIE_SHA1 with
//! the keyring in `$HOME`, and the `nonce-tcp:` transport, each with real clients and
//! checked against dbus-daemon's behaviour.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The stock session configuration restricted to DBUS_COOKIE_SHA1.
fn cookie_only() -> String {
    let xml = session_config("").replace("<auth>EXTERNAL</auth>", "<auth>DBUS_COOKIE_SHA1</auth>");
    assert!(xml.contains("DBUS_COOKIE_SHA1"));
    xml
}

/// `dbus-send … GetId` to `address` with `HOME=home`.
fn get_id_with_home(address: &str, home: &Path) -> CmdOutput {
    let mut c = Command::new("dbus-send");
    c.arg(format!("--bus={address}"))
        .args(["--print-reply=literal", "--reply-timeout=5000"])
        .args(["--dest=org.freedesktop.DBus", "/org/freedesktop/DBus"])
        .arg("org.freedesktop.DBus.GetId")
        .env("HOME", home);
    run_with_timeout(c, TIMEOUT)
}

#[test]
fn cookie_sha1_keyring_is_in_home() {
    // libdbus takes its own user's keyring from $HOME (not the user database), in the bus as
    // in the client: with the same HOME they share it.
    let home = TempDir::new("home");
    let mut bus = TestBus::with_config_env(&cookie_only(), &[("HOME", home.path())]);
    let out = get_id_with_home(&bus.address, home.path());
    assert_eq!(out.ok().trim().len(), 32, "{out:#?}");
    let keyring = home
        .path()
        .join(".dbus-keyrings")
        .join("org_freedesktop_general");
    assert!(keyring.exists(), "no keyring in $HOME");
    // gdbus (its own SASL code) finds the same keyring.
    let mut g = Command::new("gdbus");
    g.args(["call", "--address", &bus.address])
        .args(["--dest", DBUS, "--object-path", DBUS_PATH])
        .args(["--method", "org.freedesktop.DBus.GetId"])
        .env("HOME", home.path());
    let out = run_with_timeout(g, TIMEOUT);
    assert!(out.ok().contains('\''), "{out:#?}");
    // A client with another HOME cannot read the cookie: refused, and the bus says why.
    let other = TempDir::new("otherhome");
    let out = get_id_with_home(&bus.address, other.path());
    assert!(!out.success(), "{out:#?}");
    assert!(out.status.is_some(), "the client hung: {out:#?}");
    if !is_reference_daemon() {
        let log = bus.stderr();
        assert!(
            log.lines()
                .any(|l| l.starts_with("[INFO ") && l.contains("authentication rejected")),
            "{log}"
        );
    }
    assert!(bus.running(), "{}", bus.stderr());
}

/// A bus listening on `--address=LISTEN` (TCP), started with `HOME=home` and DBUS_COOKIE_SHA1
/// only; SIGTERM on drop.
struct TcpBus {
    child: std::process::Child,
    address: String,
    stderr: std::path::PathBuf,
    _dir: TempDir,
}

impl TcpBus {
    fn start(listen: &str, home: &Path) -> TcpBus {
        let dir = TempDir::new("tcpbus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, cookie_only()).unwrap();
        let stderr = dir.path().join("stderr");
        let mut child = Command::new(daemon_path())
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .arg(format!("--address={listen}"))
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("HOME", home)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let bus = TcpBus {
            child,
            address: line.trim().to_string(),
            stderr,
            _dir: dir,
        };
        assert!(!bus.address.is_empty(), "no address: {}", bus.stderr());
        bus
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The value of `key` in the printed address, unescaped.
    fn value(&self, key: &str) -> String {
        let raw = self
            .address
            .split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {}", self.address));
        let mut out = Vec::new();
        let mut bytes = raw.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("hex escape"));
            } else {
                out.push(b);
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn connect(&self) -> std::net::TcpStream {
        let port: u16 = self.value("port").parse().unwrap();
        let s = std::net::TcpStream::connect((self.value("host").as_str(), port)).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    /// SIGTERM and wait for the exit.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        if is_reference_daemon() && self.address.contains("noncefile=") {
            // dbus-daemon leaves its nonce directory behind on SIGTERM.
            let file = std::path::PathBuf::from(self.value("noncefile"));
            if let Some(dir) = file
                .parent()
                .filter(|d| d.starts_with(std::env::temp_dir()))
            {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

impl Drop for TcpBus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Everything the bus sends on `s` until it closes the connection (or a timeout panics).
fn read_until_closed(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection not closed: {e}; got {got:?}"),
        }
    }
}

#[test]
fn nonce_tcp_serves_clients_that_send_the_nonce() {
    let home = TempDir::new("home");
    let mut bus = TcpBus::start("nonce-tcp:host=127.0.0.1", home.path());
    // Never downgraded to plain tcp: the printed address names the nonce file.
    assert!(
        bus.address.starts_with("nonce-tcp:host=127.0.0.1,port="),
        "{}",
        bus.address
    );
    let file = std::path::PathBuf::from(bus.value("noncefile"));
    assert_eq!(
        std::fs::read(&file).unwrap().len(),
        16,
        "{}",
        file.display()
    );
    // In a directory of its own that only the bus's user can read, as dbus-daemon does.
    use std::os::unix::fs::PermissionsExt;
    let dir = file.parent().unwrap();
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    // libdbus (dbus-send, python3-dbus) and GDBus read the file and send the nonce first.
    let out = get_id_with_home(&bus.address, home.path());
    assert_eq!(out.ok().trim().len(), 32, "{out:#?}");
    let mut g = Command::new("gdbus");
    g.args(["call", "--address", &bus.address])
        .args(["--dest", DBUS, "--object-path", DBUS_PATH])
        .args(["--method", "org.freedesktop.DBus.GetId"])
        .env("HOME", home.path());
    let out = run_with_timeout(g, TIMEOUT);
    assert!(out.ok().contains('\''), "{out:#?}");
    let mut py = Command::new(PYTHON);
    py.arg("-c")
        .arg(
            "import dbus, sys\n\
             bus = dbus.bus.BusConnection(sys.argv[1])\n\
             print(bus.get_object('org.freedesktop.DBus', '/').GetId(\
             dbus_interface='org.freedesktop.DBus'))",
        )
        .arg(&bus.address)
        .env("HOME", home.path());
    let out = run_with_timeout(py, TIMEOUT);
    assert_eq!(out.ok().trim().len(), 32, "{out:#?}");
    bus.stop();
    // sluicebus removes it on exit (dbus-daemon leaves it behind on SIGTERM; `stop` then
    // removes it for the test).
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn nonce_tcp_closes_connections_without_the_nonce() {
    use std::io::Write;
    let home = TempDir::new("home");
    let bus = TcpBus::start("nonce-tcp:host=127.0.0.1", home.path());
    let nonce = std::fs::read(bus.value("noncefile")).unwrap();
    let hello = b"\0AUTH ANONYMOUS\r\n";
    // The right nonce: the conversation goes on (only DBUS_COOKIE_SHA1 is offered).
    let mut s = bus.connect();
    s.write_all(&[&nonce[..], hello].concat()).unwrap();
    let mut line = [0u8; 27];
    std::io::Read::read_exact(&mut s, &mut line).unwrap();
    assert_eq!(&line, b"REJECTED DBUS_COOKIE_SHA1\r\n");
    // A wrong nonce, or none (a plain tcp client): closed without a word.
    let mut wrong = nonce.clone();
    wrong[7] ^= 0x40;
    for (what, bytes) in [
        ("wrong nonce", [&wrong[..], hello].concat()),
        ("no nonce", hello.to_vec()),
    ] {
        let mut s = bus.connect();
        s.write_all(&bytes).unwrap();
        assert_eq!(read_until_closed(&mut s), b"", "{what}");
    }
    if !is_reference_daemon() {
        let log = bus.stderr();
        assert!(log.contains("authentication failed: wrong nonce"), "{log}");
    }
    // The bus still serves.
    let out = get_id_with_home(&bus.address, home.path());
    assert_eq!(out.ok().trim().len(), 32, "{out:#?}");
}
