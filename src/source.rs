//! The one shape every source of runtime state takes: observe → fingerprint → parse → validate,
//! keeping the last good value.
//!
//! A [`Source`] says how to observe a version cheaply ([`Source::observe`], a `stat` of its files)
//! and how to read, parse and validate it ([`Source::load`]). [`Watched`] holds a source with the
//! version it last saw and the last value that loaded: polling it reads the source only when the
//! version changed, and a bad new version is reported once and leaves the last good value in
//! place. A `Watched` never publishes anything: it hands its value to the one builder
//! (`runtime::build`), which swaps the whole state or keeps the running one.
//!
//! Files are polled rather than watched with inotify: a `stat` of a handful of paths every few
//! hundred milliseconds costs nothing, and it sees every way operators replace files, including
//! Kubernetes' atomic `..data` symlink swap of Secret volumes (the watched path's own inode never
//! changes there, only the target's) and editors that rename a new file over the old one. The
//! fingerprint follows symlinks, so any of those show up as a new inode, size or mtime.

use std::sync::Arc;

pub use crate::fingerprint::Fingerprint;

/// The version of a source: the fingerprints of every file it reads, in a fixed order (`None`
/// for a file that does not exist).
pub type Version = Vec<Option<Fingerprint>>;

/// A source of one part of the runtime state.
pub trait Source {
    /// What a successful load produces.
    type Value;
    type Error: std::error::Error;

    /// The current version, cheaply (no parsing). Taken *before* [`Self::load`], so a file that
    /// changes in between is seen as changed again at the next poll.
    fn observe(&self) -> Version;

    /// Reads, parses and validates the source. `previous` is the last good value, for values that
    /// carry history across versions (a key's last use).
    fn load(&self, previous: Option<&Self::Value>) -> Result<Self::Value, Self::Error>;

    /// Whether a newly loaded value says the same as the current one (a file rewritten with
    /// identical content): then nothing is reported and nothing is rebuilt.
    fn same(_current: &Self::Value, _new: &Self::Value) -> bool {
        false
    }
}

/// A source with the version it last saw and its last good value. Cloning is cheap (the value is
/// shared), so the reload loop works on a copy of its sources and keeps the copy only if the
/// state built from it is published: a refused candidate changes no source.
#[derive(Debug)]
pub struct Watched<S: Source> {
    source: S,
    /// The version last looked at (applied or rejected): a rejected version is not re-read and
    /// re-reported at every poll, only the next change is.
    seen: Version,
    good: Arc<S::Value>,
}

/// What a poll found.
#[derive(Debug)]
pub enum Change<E> {
    /// Same version, or a new version with the same content.
    None,
    /// A new value is in place.
    Applied,
    /// The new version did not load; the last good value stays.
    Rejected(E),
}

impl<S: Source + Clone> Clone for Watched<S> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            seen: self.seen.clone(),
            good: Arc::clone(&self.good),
        }
    }
}

impl<S: Source> Watched<S> {
    /// Loads the source for the first time.
    pub fn open(source: S) -> Result<Self, S::Error> {
        let seen = source.observe();
        let good = Arc::new(source.load(None)?);
        Ok(Self { source, seen, good })
    }

    /// A source whose first value came from elsewhere (read together with the configuration, or
    /// generated and written by the builder), seen at `seen`.
    pub fn with_value(source: S, seen: Version, good: S::Value) -> Self {
        Self {
            source,
            seen,
            good: Arc::new(good),
        }
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn value(&self) -> &Arc<S::Value> {
        &self.good
    }

    /// The version last looked at.
    pub fn seen(&self) -> &Version {
        &self.seen
    }

    /// Reads the source if its version changed since it was last seen; a new value replaces the
    /// last good one.
    pub fn poll(&mut self) -> Change<S::Error> {
        let now = self.source.observe();
        if now == self.seen {
            return Change::None;
        }
        self.seen = now;
        match self.source.load(Some(&self.good)) {
            Ok(value) if S::same(&self.good, &value) => Change::None,
            Ok(value) => {
                self.good = Arc::new(value);
                Change::Applied
            }
            Err(e) => Change::Rejected(e),
        }
    }

    /// Reads the source whatever its version (an operator asked for a reload). No `same` check:
    /// an explicit reload always counts as one.
    pub fn reload(&mut self) -> Change<S::Error> {
        self.seen = self.source.observe();
        match self.source.load(Some(&self.good)) {
            Ok(value) => {
                self.good = Arc::new(value);
                Change::Applied
            }
            Err(e) => Change::Rejected(e),
        }
    }

    /// Replaces the value and the version seen (a value the builder generated and wrote).
    pub fn replace(&mut self, seen: Version, value: S::Value) {
        self.seen = seen;
        self.good = Arc::new(value);
    }

    /// Marks `seen` as looked at without reading it (a refused configuration is not retried
    /// until it changes again).
    pub fn mark_seen(&mut self, seen: Version) {
        self.seen = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A text file that must not be empty.
    #[derive(Debug, Clone)]
    struct Text(PathBuf);

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Bad(String);

    impl Source for Text {
        type Value = String;
        type Error = Bad;
        fn observe(&self) -> Version {
            vec![Fingerprint::of(&self.0)]
        }
        fn load(&self, _: Option<&String>) -> Result<String, Bad> {
            let text = std::fs::read_to_string(&self.0).map_err(|e| Bad(e.to_string()))?;
            if text.is_empty() {
                return Err(Bad("empty".into()));
            }
            Ok(text)
        }
        fn same(a: &String, b: &String) -> bool {
            a == b
        }
    }

    fn replace(dir: &Path, path: &Path, text: &str) {
        let tmp = dir.join("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

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

    #[test]
    fn a_bad_version_keeps_the_last_good_value_and_is_reported_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v");
        std::fs::write(&path, "one").expect("write");
        let mut w = Watched::open(Text(path.clone())).expect("open");
        assert!(matches!(w.poll(), Change::None));

        replace(dir.path(), &path, "two");
        assert!(matches!(w.poll(), Change::Applied));
        assert_eq!(w.value().as_str(), "two");

        replace(dir.path(), &path, "");
        assert!(matches!(w.poll(), Change::Rejected(_)));
        assert_eq!(w.value().as_str(), "two", "last good value stays");
        assert!(matches!(w.poll(), Change::None), "reported once");

        // Same content under a new inode is no change.
        replace(dir.path(), &path, "two");
        assert!(matches!(w.poll(), Change::None));

        // A working copy changes nothing until it replaces the original.
        replace(dir.path(), &path, "three");
        let mut copy = w.clone();
        assert!(matches!(copy.poll(), Change::Applied));
        assert_eq!(w.value().as_str(), "two");
        assert!(
            matches!(w.poll(), Change::Applied),
            "the original still sees the change"
        );
    }
}
