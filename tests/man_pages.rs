//! The manual pages in `man/` and the `--version` banners: the pages render without groff
//! warnings, document every option `--help` lists (and no option it does not), and the
//! sluicebus-container example is the README's.

mod common;

use common::{run_with_timeout, TIMEOUT};
use std::path::PathBuf;
use std::process::Command;

const DAEMON: &str = env!("CARGO_BIN_EXE_sluicebus");
const TOOL: &str = env!("CARGO_BIN_EXE_sluicebus-container");

fn page(name: &str) -> (PathBuf, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("man/{name}.1"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (p, text)
}

/// roff source to plain text for the escapes the pages use.
fn unroff(s: &str) -> String {
    s.replace("\\-", "-")
        .replace("\\(aq", "'")
        .replace("\\e", "\\")
}

/// The options (`--long`, `-h`) named in `text`, in order, without duplicates.
fn options_in(text: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for tok in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        let is_opt = (tok.starts_with("--") && tok.len() > 2 && !tok.ends_with('-')) || tok == "-h";
        if is_opt && !v.iter().any(|o| o == tok) {
            v.push(tok.to_string());
        }
    }
    v
}

/// The options a page documents: the tags of the `.TP` entries of its OPTIONS section.
fn documented_options(roff: &str) -> Vec<String> {
    let section = roff
        .split("\n.SH OPTIONS\n")
        .nth(1)
        .and_then(|s| s.split("\n.SH ").next())
        .expect("an OPTIONS section");
    let lines: Vec<&str> = section.lines().collect();
    let tags: String = lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .map(|w| unroff(w[1]) + "\n")
        .collect();
    options_in(&tags)
}

fn help_of(bin: &str) -> String {
    let mut c = Command::new(bin);
    c.arg("--help");
    let out = run_with_timeout(c, TIMEOUT);
    // dbus-daemon prints its usage to stderr (status 1); the tool to stdout.
    format!("{}{}", out.stdout, out.stderr)
}

#[test]
fn pages_render_without_warnings() {
    for name in ["sluicebus", "sluicebus-container"] {
        let (path, _) = page(name);
        let mut c = Command::new("groff");
        // -P-cbou: plain text, no overstriking for bold or underline.
        c.args(["-man", "-Tutf8", "-ww", "-P-cbou"]).arg(&path);
        let out = run_with_timeout(c, TIMEOUT);
        assert!(out.success(), "{name}: {out:#?}");
        assert!(
            out.stderr.is_empty(),
            "{name}: groff warned: {}",
            out.stderr
        );
        assert!(out.stdout.contains("SYNOPSIS"), "{name}: {out:#?}");
    }
}

#[test]
fn pages_document_exactly_the_options_of_help() {
    for (name, bin) in [("sluicebus", DAEMON), ("sluicebus-container", TOOL)] {
        let help = help_of(bin);
        // The daemon's usage line, like dbus-daemon's, does not name -h/--help; both pages
        // document them.
        let not_help = |o: &String| o != "-h" && o != "--help";
        let mut in_help: Vec<String> = options_in(&help).into_iter().filter(not_help).collect();
        assert!(in_help.len() > 5, "{name}: --help lists {in_help:?}");
        let (_, roff) = page(name);
        let documented = documented_options(&roff);
        assert!(
            documented.iter().any(|o| o == "--help"),
            "{name}: --help undocumented"
        );
        let mut documented: Vec<String> = documented.into_iter().filter(not_help).collect();
        in_help.sort();
        documented.sort();
        assert_eq!(
            documented, in_help,
            "{name}: OPTIONS of man/{name}.1 vs --help"
        );
    }
    // The daemon's SYNOPSIS is its usage line.
    let (_, roff) = page("sluicebus");
    let synopsis: String = roff
        .lines()
        .filter_map(|l| l.strip_prefix(".OP "))
        .map(|o| format!(" [{}]", unroff(o)))
        .collect();
    assert_eq!(format!("sluicebus{synopsis}"), help_of(DAEMON).trim());
}

#[test]
fn container_example_is_the_readmes() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let in_readme = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .find(|b| b.contains("exec bwrap"))
        .expect("README has a bwrap example");
    let (_, roff) = page("sluicebus-container");
    let in_page = roff
        .split("\n.EX\n")
        .nth(1)
        .and_then(|s| s.split("\n.EE").next())
        .expect("an .EX example");
    assert_eq!(unroff(in_page), in_readme);
}

#[test]
fn version_banners() {
    for (bin, name, features) in [
        (DAEMON, "sluicebus", true),
        (TOOL, "sluicebus-container", false),
    ] {
        let mut c = Command::new(bin);
        c.arg("--version");
        let out = run_with_timeout(c, TIMEOUT);
        let text = out.ok().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(format!("{name} {}", env!("CARGO_PKG_VERSION")).as_str()),
            "{text}"
        );
        assert!(
            lines.get(1).is_some_and(|l| l.starts_with("Copyright")),
            "{text}"
        );
        assert!(text.contains("NO warranty"), "{text}");
        let feature_line = lines.iter().find(|l| l.starts_with("Features: "));
        if features {
            let f = feature_line.expect("a Features line");
            for want in ["systemd-activation", "containers1", "inotify", "sd-notify"] {
                assert!(f.split_whitespace().any(|w| w == want), "{f}");
            }
        } else {
            assert!(feature_line.is_none(), "{text}");
        }
    }
}
