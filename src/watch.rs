//! Change detection for files scoregate reads at runtime (key files, later JWKS files,
//! certificates and the config file).
//!
//! Files are polled rather than watched with inotify: a `stat` of a handful of paths every few
//! hundred milliseconds costs nothing, and it sees every way operators replace files, including
//! Kubernetes' atomic `..data` symlink swap of Secret volumes (the watched path's own inode never
//! changes there, only the target's) and editors that rename a new file over the old one. The
//! fingerprint follows symlinks, so any of those show up as a new inode, size or mtime.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::keys::Reloaded;
use crate::runtime::Gateway;
use crate::telemetry::activity::{ActivityRecord, Outcome};

/// How often watched files are checked; changes apply within about this long.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

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

/// Polls every watched file until background tasks stop. Each pass re-reads the route table, so
/// services added or removed by a reload are followed automatically.
pub async fn watch_loop(gw: Arc<Gateway>) {
    let stop = gw.lifecycle.stop_background.clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        let routes = gw.routes.load_full();
        for service in routes.services() {
            let Some(store) = service.keys().cloned() else {
                continue;
            };
            // Reading and parsing a small file; off the async workers all the same.
            let polled = tokio::task::spawn_blocking(move || store.poll_file()).await;
            let name = service.config.name.as_str();
            match polled {
                Ok(None | Some(Ok(Reloaded::Unchanged))) | Err(_) => {}
                Ok(Some(Ok(Reloaded::Applied { updated_by }))) => {
                    gw.metrics
                        .key_reloads
                        .with_label_values(&[name, "success"])
                        .inc();
                    tracing::info!(service = name, "key file changed; new keys are in force");
                    // A file written by this gateway's API was already applied and is skipped as
                    // `Unchanged`; a change seen here came from another process or an operator.
                    let initiator = match updated_by.as_deref() {
                        Some("cli") => "cli",
                        _ => "file-watch",
                    };
                    gw.activity.record(
                        ActivityRecord::new("reloadKeys", initiator, Outcome::Succeeded)
                            .service(name),
                    );
                }
                Ok(Some(Err(e))) => {
                    gw.metrics
                        .key_reloads
                        .with_label_values(&[name, "error"])
                        .inc();
                    tracing::error!(service = name, error = %e, "key file change rejected; the previous keys stay in force");
                    gw.activity.record(
                        ActivityRecord::new("reloadKeys", "file-watch", Outcome::Failed)
                            .service(name)
                            .reason(
                                "the new key file is invalid or unreadable; previous keys kept",
                            ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_swap_changes_the_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "same").expect("write");
        std::fs::write(&b, "same").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).expect("symlink");
        let before = Fingerprint::of(&link).expect("fp");
        assert_eq!(Fingerprint::of(&link), Some(before));
        // Swap the link atomically, as Kubernetes does with `..data`.
        let tmp = dir.path().join("link.tmp");
        std::os::unix::fs::symlink(&b, &tmp).expect("symlink");
        std::fs::rename(&tmp, &link).expect("rename");
        assert_ne!(Fingerprint::of(&link), Some(before));
        assert_eq!(Fingerprint::of(&dir.path().join("gone")), None);
    }
}
