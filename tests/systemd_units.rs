//! The systemd units in `tools/systemd/` and the README's recipe that installs them:
//! `systemd-analyze verify` accepts the units (with the built binary in `ExecStart=`, their
//! `Documentation=` man page resolvable), and the recipe's install and enable commands,
//! run against a scratch root (`systemctl --root=DIR`, and `systemctl --user` with a scratch
//! `$HOME`), succeed and make `dbus.service` an alias of `sluicebus.service` without
//! touching the distribution's `dbus.socket`.

mod common;

use common::{run_with_timeout, TempDir, TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::Command;

const DAEMON: &str = env!("CARGO_BIN_EXE_sluicebus");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn unit(scope: &str) -> String {
    let p = Path::new(ROOT).join(format!("tools/systemd/{scope}/sluicebus.service"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = TempDir::new("units-verify");
    // Documentation=man:sluicebus(1) is checked by running man(1): give it our pages.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    for page in ["sluicebus.1", "sluicebus-container.1"] {
        std::fs::copy(Path::new(ROOT).join("man").join(page), man1.join(page)).unwrap();
    }
    // The user manager systemd-analyze simulates wants a runtime directory.
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    for scope in ["system", "user"] {
        let text = unit(scope);
        assert!(
            text.contains("\nDocumentation=man:sluicebus(1)\n"),
            "{scope}"
        );
        assert!(text.contains("\nAlias=dbus.service\n"), "{scope}");
        assert!(
            text.contains("\nExecStart=/usr/local/bin/sluicebus "),
            "{scope}: ExecStart is not the README's install path"
        );
        let scope_dir = dir.path().join(scope);
        std::fs::create_dir(&scope_dir).unwrap();
        let path = scope_dir.join("sluicebus.service");
        std::fs::write(
            &path,
            text.replace(
                "ExecStart=/usr/local/bin/sluicebus ",
                &format!("ExecStart={DAEMON} "),
            ),
        )
        .unwrap();
        let mut c = Command::new("systemd-analyze");
        if scope == "user" {
            c.arg("--user");
        }
        c.arg("verify")
            .arg(&path)
            .env("MANPATH", dir.path().join("man"))
            .env("XDG_RUNTIME_DIR", &runtime);
        let out = run_with_timeout(c, TIMEOUT);
        assert!(out.success(), "{scope}: {out:#?}");
        // Unknown keys and the like are warnings with exit status 0.
        assert!(out.stderr.is_empty(), "{scope}: {out:#?}");
    }
}

/// The commands of the README's "Replace dbus-daemon" block that install and enable things.
fn readme_recipe() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme
        .split("\n## Replace dbus-daemon\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Replace dbus-daemon section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim().to_string())
        .filter(|l| l.starts_with("install ") || l.starts_with("systemctl "))
        .collect()
}

/// `cmd` aimed at the scratch root `$R` (and `$HOME`) instead of this machine.
fn rerooted(cmd: &str) -> String {
    let bin_dir = Path::new(DAEMON).parent().unwrap().display().to_string();
    if let Some(rest) = cmd.strip_prefix("systemctl ") {
        if rest.starts_with("--user ") {
            // systemctl refuses --user with --root: it works on $HOME instead.
            cmd.to_string()
        } else {
            format!("systemctl --root=\"$R\" {rest}")
        }
    } else {
        cmd.replace(" /", " \"$R\"/")
            .replace("target/release/", &format!("{bin_dir}/"))
    }
}

fn link(p: &Path) -> PathBuf {
    std::fs::read_link(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn copy_distro_unit(root: &Path, path: &str) {
    let dest = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(path, &dest).unwrap_or_else(|e| {
        panic!("{path} (packages dbus-user-session, dbus-system-bus-common): {e}")
    });
}

#[test]
fn readme_recipe_makes_sluicebus_the_dbus_service() {
    let recipe = readme_recipe();
    let systemctl: Vec<&String> = recipe
        .iter()
        .filter(|l| l.starts_with("systemctl"))
        .collect();
    assert_eq!(systemctl.len(), 3, "{recipe:#?}");
    assert!(
        !recipe.iter().any(|l| l.contains(" mask ")),
        "the recipe masks: {recipe:#?}"
    );

    let dir = TempDir::new("units-recipe");
    let r = dir.path().join("root");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // The distribution's units the recipe builds on, as Debian installs them.
    for u in [
        "/usr/lib/systemd/user/dbus.service",
        "/usr/lib/systemd/user/dbus.socket",
        "/lib/systemd/system/dbus.service",
        "/lib/systemd/system/dbus.socket",
    ] {
        copy_distro_unit(&r, u);
    }
    // dbus-broker enabled before (its Debian package's postinst does this): --force wins.
    std::fs::write(
        r.join("usr/lib/systemd/user/dbus-broker.service"),
        "[Unit]\nDescription=dbus-broker\n[Service]\nExecStart=/bin/true\n[Install]\nAlias=dbus.service\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/user")).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/user/dbus-broker.service",
        r.join("etc/systemd/user/dbus.service"),
    )
    .unwrap();

    let script: String = recipe.iter().map(|l| rerooted(l) + "\n").collect();
    // Twice: the recipe can be repeated (an upgrade) without failing.
    for round in 1..=2 {
        let mut c = Command::new("sh");
        c.args(["-ec", &script])
            .current_dir(ROOT)
            .env("R", &r)
            .env("HOME", &home)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        let out = run_with_timeout(c, TIMEOUT);
        assert!(out.success(), "round {round}: {script}\n{out:#?}");
    }

    // Binaries and man pages installed.
    assert!(r.join("usr/local/bin/sluicebus").is_file());
    assert!(r.join("usr/local/bin/sluicebus-container").is_file());
    assert!(r.join("usr/local/share/man/man1/sluicebus.1").is_file());
    assert!(r
        .join("usr/local/share/man/man1/sluicebus-container.1")
        .is_file());
    // dbus.service is sluicebus.service, in /etc (before /usr/lib) and ~/.config.
    assert_eq!(
        link(&r.join("etc/systemd/user/dbus.service")),
        Path::new("/etc/systemd/user/sluicebus.service")
    );
    assert_eq!(
        link(&r.join("etc/systemd/system/dbus.service")),
        Path::new("/etc/systemd/system/sluicebus.service")
    );
    let user_dir = home.join(".config/systemd/user");
    assert_eq!(
        link(&user_dir.join("dbus.service")),
        user_dir.join("sluicebus.service")
    );
    for (args, unit) in [
        (&["--global"][..], "sluicebus.service"),
        (&[][..], "sluicebus.service"),
        (&["--global"][..], "dbus.service"),
        (&[][..], "dbus.service"),
    ] {
        let mut c = Command::new("systemctl");
        c.arg(format!("--root={}", r.display()))
            .args(args)
            .args(["is-enabled", unit]);
        let out = run_with_timeout(c, TIMEOUT);
        let want = if unit == "dbus.service" {
            "alias"
        } else {
            "enabled"
        };
        assert_eq!(out.stdout.trim(), want, "{args:?} {unit}: {out:#?}");
    }
    // The distribution's socket is left alone: not masked, not overridden.
    for p in [
        "etc/systemd/user/dbus.socket",
        "etc/systemd/system/dbus.socket",
    ] {
        assert!(
            std::fs::symlink_metadata(r.join(p)).is_err(),
            "{p} was created"
        );
    }
    assert!(std::fs::symlink_metadata(user_dir.join("dbus.socket")).is_err());
}
