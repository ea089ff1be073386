//! Architecture rules that a review would otherwise have to remember.
//!
//! The bus core (`src/bus`) and the protocol layer (`src/wire`) are sans-IO: they make no
//! system calls. Time, randomness and the world come in as values, through the `World`
//! trait, or leave as `Effect`s for the reactor. This test fails when their non-test code
//! names an API that would reach the operating system.

use std::path::{Path, PathBuf};

/// Names that reach the operating system (or read the clock or the environment).
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::os::unix::net",
    "std::os::unix::fs",
    "std::env",
    "std::process",
    "libc::",
    "nix::",
    "Instant::now",
    "SystemTime::now",
    "getrandom",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let path = e.expect("directory entry").path();
        if path.is_dir() {
            // `src/bus/tests` is the sans-IO harness's module, compiled only under
            // `#[cfg(test)]`: its fixtures (pipes for fd passing) may use the real world.
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Whether `code` names `name` as a path of its own (`nix::` but not `unix::`).
fn names(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The offending lines of one file: code lines before its first `#[cfg(test)]` (unit tests
/// may use the real world to build their fixtures), comments skipped.
fn violations(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        for name in FORBIDDEN {
            if names(code, name) {
                found.push(format!(
                    "{}:{}: names {name}: {}",
                    path.display(),
                    n + 1,
                    code
                ));
            }
        }
    }
    found
}

#[test]
fn bus_and_wire_make_no_system_calls() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/bus"), &mut files);
    rust_files(&root.join("src/wire"), &mut files);
    assert!(
        files.len() > 10,
        "source files not found under {}",
        root.display()
    );
    let found: Vec<String> = files.iter().flat_map(|f| violations(f)).collect();
    assert!(
        found.is_empty(),
        "src/bus and src/wire must stay sans-IO; move this to the reactor or pass it in:\n{}",
        found.join("\n")
    );
}

/// The checker itself finds what it must (a test that cannot fail is a defect).
#[test]
fn checker_catches_a_system_call() {
    let dir = std::env::temp_dir().join(format!("sluicebus-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("probe.rs");
    std::fs::write(
        &file,
        "// std::fs in a comment is fine\nuse std::os::unix::ffi::OsStrExt;\nfn f() { let _ = std::fs::read(\"x\"); }\n#[cfg(test)]\nmod tests { fn g() { nix::unistd::getpid(); } }\n",
    )
    .expect("write probe");
    let found = violations(&file);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(":3: names std::fs"), "{found:?}");
}
