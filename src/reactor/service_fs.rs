//! The real filesystem behind the bus's service-file table ([`ServiceFs`]).

use crate::bus::activation::{FileStamp, ServiceFs};
use std::ffi::OsString;
use std::io;
use std::path::Path;

/// Reads service directories and files from the filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl ServiceFs for RealFs {
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect())
    }

    fn stat(&self, path: &Path) -> io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            is_file: m.is_file(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}
