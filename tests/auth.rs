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
