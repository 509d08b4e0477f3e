//! The state directory and crash-safe file writes.
//!
//! Everything scoregate persists (keys, signing keys, the admin credential, role assignments) goes
//! through [`write_atomic`]: a temporary file in the same directory, `fsync`, `rename` over the
//! target, then `fsync` of the directory, so a crash leaves either the old or the new file, never
//! a half-written one. Secret files are created with mode 0600 from the start (no window where
//! they are world-readable).
//!
//! Another local user must not be able to steer those writes: the temporary file has an
//! unpredictable name and is created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`), so a file or
//! symbolic link planted in its place makes the write fail instead of being followed, and the
//! rename replaces a link at the target instead of writing through it. A state directory (or its
//! `keys/` and `signing/` subdirectories) that group or others may write to is refused outright,
//! by config validation (startup, `check-config`, reload) and again before every write.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Subdirectories of the state directory scoregate writes into.
pub const SUBDIRS: [&str; 2] = ["keys", "signing"];

/// Why `dir` is unsafe to keep credentials in: it exists and group or others may write to it
/// (and so plant or replace files). `None` when it is missing or private enough.
pub fn writable_by_others(dir: &Path) -> Option<String> {
    let mode = fs::metadata(dir).ok()?.permissions().mode();
    (mode & 0o022 != 0).then(|| {
        format!(
            "{} is writable by group or others (mode {:o}); it holds credentials: \
             `chmod go-w` it (0700 recommended)",
            dir.display(),
            mode & 0o7777
        )
    })
}

/// The state directory and its subdirectories that are writable by group or others.
pub fn check_state_dir(state_dir: &Path) -> Vec<String> {
    std::iter::once(state_dir.to_path_buf())
        .chain(SUBDIRS.iter().map(|sub| state_dir.join(sub)))
        .filter_map(|dir| writable_by_others(&dir))
        .collect()
}

/// Creates the state directory with mode 0700 if it is missing; refuses an existing one that
/// group or others may write to.
pub fn ensure_state_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        return Ok(());
    }
    if let Some(problem) = writable_by_others(dir) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            problem,
        ));
    }
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{mode:o}"),
            "state directory is accessible to other users; it holds credentials (expected 0700)"
        );
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically; the file gets `mode` (e.g. 0o600).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp.");
    for b in nonce {
        tmp_name.push(format!("{b:02x}"));
    }
    write_through(&dir.join(tmp_name), path, contents, mode)
}

/// Writes `contents` to the new file `tmp`, then renames it over `path`.
fn write_through(tmp: &Path, path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    // Exclusive creation: an existing file or link of that name (planted, never ours) fails the
    // write with EEXIST/ELOOP and is left alone.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(tmp)?;
    let result = (|| {
        // `mode` is filtered by the umask at creation; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_with_exact_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.json");
        write_atomic(&path, b"one", 0o600).expect("write");
        write_atomic(&path, b"two", 0o600).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["keys.json"]);
    }

    /// A link planted where the temporary file goes is not followed: the write fails and the
    /// link's target is untouched (issue 15 item 11).
    #[test]
    fn a_planted_link_at_the_temporary_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").expect("victim");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
        let path = dir.path().join("keys.json");
        let tmp = dir.path().join(".keys.json.tmp.planted");
        std::os::unix::fs::symlink(&victim, &tmp).expect("plant link");
        let err = write_through(&tmp, &path, b"secret", 0o600).expect_err("planted link");
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        let mode = fs::metadata(&victim).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the victim's mode was changed");
        assert!(!path.exists(), "nothing was renamed into place");
        assert!(
            fs::symlink_metadata(&tmp).expect("link").is_symlink(),
            "the planted link is not ours to remove"
        );
    }

    /// The temporary name is unpredictable: a link at the name earlier versions used
    /// (`.NAME.tmp.PID`) catches nothing, and a link at the target is replaced, not written
    /// through.
    #[test]
    fn links_at_the_old_temporary_name_or_the_target_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").expect("victim");
        let path = dir.path().join("keys.json");
        let predictable = dir
            .path()
            .join(format!(".keys.json.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &predictable).expect("plant link");
        std::os::unix::fs::symlink(&victim, &path).expect("plant target link");
        write_atomic(&path, b"secret", 0o600).expect("write");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        let meta = fs::symlink_metadata(&path).expect("target");
        assert!(meta.is_file(), "the target is a regular file now");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).expect("read"), b"secret");
    }

    #[test]
    fn a_state_dir_writable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("mkdir");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_state_dir(&state).expect("0755 only warns");
        assert!(check_state_dir(&state).is_empty());
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ensure_state_dir(&state).expect_err("0777");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string().contains(&state.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("777"), "{err}");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod");
        let keys = state.join("keys");
        fs::create_dir(&keys).expect("mkdir keys");
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o770)).expect("chmod");
        let problems = check_state_dir(&state);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("keys") && problems[0].contains("770"));
    }

    #[test]
    fn state_dir_is_created_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("a/state");
        ensure_state_dir(&state).expect("create");
        let mode = fs::metadata(&state).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
