//! This replica's copy of its etcd namespace: every key under the prefix with its (sealed) value
//! and mod revision, and the store revision the copy reflects. The sync loop (`cluster::sync`)
//! fills it from a full read and then from the watch; the shared sources read from it, so a
//! change reaches the runtime state through the same observe → load → build path as a file.
//!
//! The copy is also kept on disk, sealed as it is in etcd (`state_dir/cluster-snapshot.json`,
//! 0600), so a replica that has synced before can start while etcd is down.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::etcd::{Change, KeyValue};
use crate::fingerprint::Fingerprint;

/// One value as etcd holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sealed (secrets) or plain (role assignments, registrations) bytes, as stored.
    pub value: Arc<Vec<u8>>,
    pub mod_revision: i64,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    /// The store revision this copy reflects (0: never synced).
    revision: i64,
}

/// See the module docs. Cloning shares the copy.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    state: Arc<RwLock<State>>,
}

/// The snapshot file's format.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    prefix: String,
    revision: i64,
    /// key → [mod revision, base64 of the stored bytes]
    entries: BTreeMap<String, (i64, String)>,
}

impl Mirror {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.read().entries.get(key).cloned()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &str) -> Vec<(String, Entry)> {
        self.read()
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// The version of one key (`None`: absent).
    pub fn stamp(&self, key: &str) -> Option<Fingerprint> {
        self.read()
            .entries
            .get(key)
            .map(|e| Fingerprint::revision(e.mod_revision, 1))
    }

    /// The version of every key under `prefix` together: the newest mod revision and the count
    /// (a delete changes the count, a put the revision).
    pub fn prefix_stamp(&self, prefix: &str) -> Option<Fingerprint> {
        let entries = self.prefix(prefix);
        let newest = entries.iter().map(|(_, e)| e.mod_revision).max()?;
        Some(Fingerprint::revision(newest, entries.len()))
    }

    /// The store revision this copy reflects (0: never synced).
    pub fn revision(&self) -> i64 {
        self.read().revision
    }

    /// Replaces the copy with a full read at `revision`.
    pub fn replace(&self, kvs: Vec<KeyValue>, revision: i64) {
        let entries = kvs.into_iter().filter_map(entry).collect();
        *self.write() = State { entries, revision };
    }

    /// Records a value this replica just committed at `mod_revision`, unless the watch already
    /// brought a newer one. The watch delivers the same value later (no change then); until it
    /// does, the shared source that wrote it sees the version it wrote, not "absent".
    pub fn committed(&self, key: &str, value: Vec<u8>, mod_revision: i64) {
        let mut state = self.write();
        if state
            .entries
            .get(key)
            .is_none_or(|e| e.mod_revision < mod_revision)
        {
            state.entries.insert(
                key.to_owned(),
                Entry {
                    value: Arc::new(value),
                    mod_revision,
                },
            );
        }
    }

    /// Applies watched changes; `revision` is the newest revision they cover.
    pub fn apply(&self, changes: Vec<Change>, revision: i64) {
        let mut state = self.write();
        for change in changes {
            match change {
                Change::Put(kv) => {
                    if let Some((k, e)) = entry(kv) {
                        state.entries.insert(k, e);
                    }
                }
                Change::Delete { key, .. } => {
                    if let Ok(k) = String::from_utf8(key) {
                        state.entries.remove(&k);
                    }
                }
            }
        }
        state.revision = state.revision.max(revision);
    }

    /// Writes the copy to `path` (0600, atomically), sealed values as they are.
    pub fn save(&self, path: &Path, prefix: &str) -> std::io::Result<()> {
        let snapshot = {
            let state = self.read();
            Snapshot {
                prefix: prefix.to_owned(),
                revision: state.revision,
                entries: state
                    .entries
                    .iter()
                    .map(|(k, e)| (k.clone(), (e.mod_revision, STANDARD.encode(&*e.value))))
                    .collect(),
            }
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
        crate::state::write_atomic(path, &bytes, 0o600)
    }

    /// Loads a snapshot written by [`Self::save`] for `prefix`; `Ok(false)` when there is none.
    pub fn load(&self, path: &Path, prefix: &str) -> std::io::Result<bool> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        if snapshot.prefix != prefix {
            return Ok(false);
        }
        let mut entries = BTreeMap::new();
        for (k, (mod_revision, value)) in snapshot.entries {
            let value = STANDARD.decode(value).map_err(std::io::Error::other)?;
            entries.insert(
                k,
                Entry {
                    value: Arc::new(value),
                    mod_revision,
                },
            );
        }
        *self.write() = State {
            entries,
            revision: snapshot.revision,
        };
        Ok(true)
    }
}

fn entry(kv: KeyValue) -> Option<(String, Entry)> {
    let key = String::from_utf8(kv.key).ok()?;
    Some((
        key,
        Entry {
            value: Arc::new(kv.value),
            mod_revision: kv.mod_revision,
        },
    ))
}
