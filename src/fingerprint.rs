//! What identifies one version of a file: device, inode, size and change times, following
//! symlinks. A leaf module: the configuration records the versions of the files it reads, and
//! every source of the runtime state (`source`) compares them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    /// The version of a value held in etcd (fleet mode): its mod revision, and for a set of keys
    /// their count. Never equal to a file's fingerprint (no file lives on device `u64::MAX`).
    pub fn revision(mod_revision: i64, count: usize) -> Self {
        Self {
            dev: u64::MAX,
            ino: u64::try_from(mod_revision).unwrap_or(0),
            size: count as u64,
            mtime_ns: 0,
            ctime_ns: 0,
        }
    }

    /// The mod revision of an etcd value's version ([`Self::revision`]).
    pub fn as_revision(&self) -> Option<i64> {
        (self.dev == u64::MAX).then(|| i64::try_from(self.ino).unwrap_or(0))
    }

    /// The fingerprint of the file `path` resolves to, or `None` if it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}
