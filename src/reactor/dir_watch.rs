//! Watching the configuration and service directories with inotify. As in dbus-daemon, any
//! file written, removed or renamed in one of them reloads the configuration, which rescans
//! the service directories and announces `ActivatableServicesChanged`.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The events that can change what a directory's files say.
fn interesting() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

/// Whether a file of this name can change the configuration: only `.conf` and `.service`
/// files do, so sockets, pid files and editors' temporary files in the same directories do
/// not cause reloads.
fn relevant(name: &std::ffi::OsStr) -> bool {
    let b = name.as_encoded_bytes();
    b.ends_with(b".conf") || b.ends_with(b".service")
}

/// An inotify instance and the directories it watches.
pub struct DirWatch {
    inotify: Inotify,
    watched: Vec<(PathBuf, WatchDescriptor)>,
}

impl DirWatch {
    /// A non-blocking, close-on-exec inotify instance watching nothing yet.
    pub fn new() -> nix::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(DirWatch {
            inotify,
            watched: Vec::new(),
        })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }

    /// Watch exactly `dirs` (duplicates and empty paths ignored). Directories that do not
    /// exist cannot be watched and are skipped, as in dbus-daemon.
    pub fn set<'a>(&mut self, dirs: impl IntoIterator<Item = &'a Path>) {
        let mut wanted: Vec<&Path> = Vec::new();
        for d in dirs {
            if !d.as_os_str().is_empty() && !wanted.contains(&d) {
                wanted.push(d);
            }
        }
        let inotify = &self.inotify;
        self.watched.retain(|(path, wd)| {
            let keep = wanted.contains(&path.as_path());
            if !keep {
                let _ = inotify.rm_watch(*wd);
            }
            keep
        });
        for d in wanted {
            if self.watched.iter().any(|(p, _)| p == d) {
                continue;
            }
            match self.inotify.add_watch(d, interesting()) {
                Ok(wd) => self.watched.push((d.to_path_buf(), wd)),
                Err(e) => log::debug!("not watching {}: {e}", d.display()),
            }
        }
    }

    /// The directories being watched.
    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.iter().map(|(p, _)| p.as_path())
    }

    /// Read every queued event; true if any says a watched directory changed.
    pub fn drain(&mut self) -> bool {
        let mut changed = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for ev in events {
                if ev.mask.intersects(interesting()) && ev.name.as_deref().is_none_or(relevant) {
                    changed = true;
                }
                // The kernel dropped a watch: the directory went away (or `set` removed the
                // watch itself, and then it is no longer listed and means nothing).
                if ev.mask.contains(AddWatchFlags::IN_IGNORED)
                    && self.watched.iter().any(|(_, wd)| *wd == ev.wd)
                {
                    self.watched.retain(|(_, wd)| *wd != ev.wd);
                    changed = true;
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sluicebus-dirwatch-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reports_new_removed_and_renamed_files_only_in_watched_dirs() {
        let (a, b) = (tempdir("a"), tempdir("b"));
        let mut w = DirWatch::new().unwrap();
        w.set([
            a.as_path(),
            a.as_path(),
            Path::new(""),
            Path::new("/nonexistent/x"),
        ]);
        assert_eq!(w.watched().collect::<Vec<_>>(), [a.as_path()]);
        assert!(!w.drain(), "nothing happened yet");
        std::fs::write(b.join("x.service"), "x").unwrap();
        assert!(!w.drain(), "b is not watched");
        std::fs::write(a.join("bus.pid"), "1").unwrap();
        std::fs::write(a.join(".x.service.swp"), "x").unwrap();
        assert!(
            !w.drain(),
            "files that are not .conf or .service do not count"
        );
        std::fs::write(a.join("x.service"), "x").unwrap();
        assert!(w.drain());
        std::fs::rename(a.join("x.service"), a.join("y.service")).unwrap();
        assert!(w.drain());
        std::fs::remove_file(a.join("y.service")).unwrap();
        assert!(w.drain());
        // Switching the set moves the watch.
        w.set([b.as_path()]);
        std::fs::write(a.join("z.service"), "z").unwrap();
        assert!(!w.drain(), "a is no longer watched");
        std::fs::write(b.join("z.service"), "z").unwrap();
        assert!(w.drain());
        // A watched directory that disappears is reported and forgotten.
        std::fs::remove_dir_all(&b).unwrap();
        assert!(w.drain());
        assert_eq!(w.watched().count(), 0);
        std::fs::remove_dir_all(&a).unwrap();
    }
}
