//! The primary/secondary keys of a key-mode service.
//!
//! Hot path: [`KeySet::verify`] hashes the presented credential once (SHA-256 over a per-file
//! salt and the key) and compares the fixed-size digest with both slots in constant time
//! (`subtle`). A `KeySet` is immutable and lives in the runtime state (`runtime::Service`), so a
//! request reads it with no lock and no atomic load of its own. Keys never leave this module
//! except through [`KeyListing`] (for `listkeys`) and [`NewKeys`] (for `regenerateKeys`); the
//! [`Secret`] wrapper redacts them from `Debug` and zeroes them on drop.
//!
//! Storage ([`KeyFile`]): generated keys live in `state_dir/keys/<service>.json` (0600, atomic
//! writes), either in plain text or, with `key_storage = "hashed"`, as salted digests only. An
//! operator may instead provide a read-only `keys_file` (e.g. a Kubernetes Secret volume). Either
//! file is a source of the runtime state, polled for changes through `source`; a bad new
//! file leaves the last good keys in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::KeySlot;
pub use crate::config::{KeySource, KeyStorage};
use crate::source::Fingerprint;
use crate::state::write_atomic;
use file::{Material, parse_file, render_file};

/// Minimum length of an operator-chosen key (`keyValue`, key files).
pub const MIN_KEY_LEN: usize = 32;
/// Longest accepted key; anything longer is not a key we issued or accept.
pub const MAX_KEY_LEN: usize = 256;

/// A key in plain text: redacted in `Debug`, zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid key file: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("keys are provided by the read-only file {} (keys_file); change that file instead", path.display())]
    ReadOnly { path: PathBuf },
    #[error(
        "keys are stored hashed (key_storage = \"hashed\"), so they cannot be listed; regenerate a key to see its new value once"
    )]
    Hashed,
    #[error("keyValue {0}")]
    BadValue(&'static str),
    #[error("the system random number generator failed")]
    Random,
}

/// Checks an operator-chosen key: 32 to 256 printable ASCII characters without spaces.
pub fn validate_key_value(value: &str) -> Result<(), &'static str> {
    if value.len() < MIN_KEY_LEN {
        return Err("must be at least 32 characters");
    }
    if value.len() > MAX_KEY_LEN {
        return Err("must be at most 256 characters");
    }
    if !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must be printable ASCII without spaces");
    }
    Ok(())
}

/// 256 bits from the OS CSPRNG as URL-safe base64 (43 characters).
pub fn generate_key() -> Result<Secret, KeyError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *bytes).map_err(|_| KeyError::Random)?;
    Ok(Secret::new(URL_SAFE_NO_PAD.encode(*bytes)))
}

fn new_salt() -> Result<[u8; 16], KeyError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| KeyError::Random)?;
    Ok(salt)
}

fn salted_digest(salt: &[u8; 16], key: &[u8]) -> [u8; 32] {
    super::sha256(&[salt, key])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One key slot: its digest, the plain key when stored plain, and when it last matched.
#[derive(Debug)]
struct Slot {
    digest: [u8; 32],
    plain: Option<Secret>,
    /// Unix seconds of the last successful use since the gateway started (0 = never). Shared
    /// with the next `KeySet` when this slot's key is unchanged, so rotation of one slot keeps
    /// the other's history.
    last_used: Arc<AtomicU64>,
}

/// An immutable snapshot of both keys.
#[derive(Debug)]
pub struct KeySet {
    salt: [u8; 16],
    slots: [Slot; 2],
}

impl KeySet {
    fn index(slot: KeySlot) -> usize {
        match slot {
            KeySlot::Primary => 0,
            KeySlot::Secondary => 1,
        }
    }

    /// Constant-time check of a presented key against both slots.
    pub fn verify(&self, presented: &[u8]) -> Option<KeySlot> {
        let digest = salted_digest(&self.salt, presented);
        // Both comparisons always run; only the (public) outcome branches.
        let primary = digest.ct_eq(&self.slots[0].digest);
        let secondary = digest.ct_eq(&self.slots[1].digest);
        let slot = if bool::from(primary) {
            KeySlot::Primary
        } else if bool::from(secondary) {
            KeySlot::Secondary
        } else {
            return None;
        };
        let last = &self.slots[Self::index(slot)].last_used;
        let now = unix_now();
        // Store only when the second changes, so concurrent requests do not bounce the cache line.
        if last.load(Ordering::Relaxed) != now {
            last.store(now, Ordering::Relaxed);
        }
        Some(slot)
    }

    fn last_used_of(&self, slot: KeySlot) -> Option<u64> {
        match self.slots[Self::index(slot)]
            .last_used
            .load(Ordering::Relaxed)
        {
            0 => None,
            t => Some(t),
        }
    }

    /// Whether the plain keys are held (else digests only: `key_storage = "hashed"`).
    pub fn is_plain(&self) -> bool {
        self.slots.iter().all(|s| s.plain.is_some())
    }

    /// Both keys and when they were last used (`listkeys`).
    pub fn list(&self) -> Result<KeyListing, KeyError> {
        match (&self.slots[0].plain, &self.slots[1].plain) {
            (Some(p), Some(s)) => Ok(KeyListing {
                primary: p.clone(),
                secondary: s.clone(),
                primary_last_used: self.last_used_of(KeySlot::Primary),
                secondary_last_used: self.last_used_of(KeySlot::Secondary),
            }),
            _ => Err(KeyError::Hashed),
        }
    }

    /// When each slot last matched (also available in hashed mode).
    pub fn last_used(&self) -> [Option<u64>; 2] {
        [
            self.last_used_of(KeySlot::Primary),
            self.last_used_of(KeySlot::Secondary),
        ]
    }

    /// Builds a set from file material. Slots whose key is unchanged from `previous` keep its
    /// last-use time (and plain keys keep its salt, so unchanged slots keep their digests).
    fn build(material: Material, previous: Option<&Self>) -> Result<Self, KeyError> {
        let carry = |digest: &[u8; 32], i: usize| {
            previous
                .filter(|p| p.slots[i].digest == *digest)
                .map_or_else(
                    || Arc::new(AtomicU64::new(0)),
                    |p| Arc::clone(&p.slots[i].last_used),
                )
        };
        Ok(match material {
            Material::Plain([p, s]) => {
                let salt = previous.map_or_else(new_salt, |p| Ok(p.salt))?;
                let dp = salted_digest(&salt, p.expose().as_bytes());
                let ds = salted_digest(&salt, s.expose().as_bytes());
                Self {
                    salt,
                    slots: [
                        Slot {
                            last_used: carry(&dp, 0),
                            digest: dp,
                            plain: Some(p),
                        },
                        Slot {
                            last_used: carry(&ds, 1),
                            digest: ds,
                            plain: Some(s),
                        },
                    ],
                }
            }
            Material::Hashed { salt, digests } => {
                let same_salt = previous.is_some_and(|p| p.salt == salt);
                let slot = |i: usize| Slot {
                    last_used: if same_salt {
                        carry(&digests[i], i)
                    } else {
                        Arc::new(AtomicU64::new(0))
                    },
                    digest: digests[i],
                    plain: None,
                };
                Self {
                    salt,
                    slots: [slot(0), slot(1)],
                }
            }
        })
    }
}

/// What `listkeys` returns.
#[derive(Debug)]
pub struct KeyListing {
    pub primary: Secret,
    pub secondary: Secret,
    pub primary_last_used: Option<u64>,
    pub secondary_last_used: Option<u64>,
}

/// What `regenerateKeys` returns: both keys when stored plain; only the new one when hashed.
#[derive(Debug)]
pub struct NewKeys {
    pub primary: Option<Secret>,
    pub secondary: Option<Secret>,
}

/// A service's key file: the state-directory file scoregate generates and rotates, or the
/// operator's read-only `keys_file`. It is one source of the runtime state (see
/// `source`): observed by fingerprint, read into an immutable [`KeySet`], and written only
/// by the state's builder (first keys, storage conversion) or by a management write, which then
/// reaches the gateway through the same observe path as an operator's edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub source: KeySource,
    /// Fleet mode: the keys live in etcd under this key (a state-directory source only).
    pub shared: Option<crate::cluster::SharedKey>,
}

/// A key file as read.
#[derive(Debug)]
pub struct LoadedKeys {
    pub set: Arc<KeySet>,
    /// Who wrote the file (a principal id, or `cli`), if it says.
    pub updated_by: Option<String>,
    /// SHA-256 of the file's bytes, to tell a real change from a rewrite with the same content.
    digest: [u8; 32],
}

/// What reading a key file found.
#[derive(Debug)]
pub enum KeyFileState {
    Loaded(LoadedKeys),
    /// A state-directory file that does not exist yet: the builder generates both keys.
    Absent,
}

impl KeyFileState {
    pub fn keys(&self) -> Option<&Arc<KeySet>> {
        match self {
            Self::Loaded(l) => Some(&l.set),
            Self::Absent => None,
        }
    }

    /// The state of a file this gateway is about to write with `bytes` (generated keys, a
    /// storage conversion, a regeneration).
    pub fn written(set: Arc<KeySet>, bytes: &[u8], updated_by: &str) -> Self {
        Self::Loaded(LoadedKeys {
            set,
            updated_by: Some(updated_by.to_owned()),
            digest: digest_of(bytes),
        })
    }
}

impl KeyFile {
    pub fn new(source: KeySource) -> Self {
        Self {
            source,
            shared: None,
        }
    }

    /// The same source, read from (and written to) etcd in fleet mode.
    #[must_use]
    pub fn shared(mut self, key: crate::cluster::SharedKey) -> Self {
        self.shared = Some(key);
        self
    }

    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// Reads and parses the file. `previous` carries the salt and last-use times of unchanged
    /// slots across versions.
    pub fn read(&self, previous: Option<&KeySet>) -> Result<KeyFileState, KeyError> {
        let path = self.source.path();
        let read = match &self.shared {
            Some(shared) => shared.read(),
            None => std::fs::read(path).map(Zeroizing::new),
        };
        let bytes = match read {
            Ok(bytes) => bytes,
            // A generated file that is not there yet (and never was, for this gateway): the
            // builder makes one. An operator file, or a generated file that disappeared while
            // running, is an error (the last good keys stay).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && matches!(self.source, KeySource::State { .. })
                    && previous.is_none() =>
            {
                return Ok(KeyFileState::Absent);
            }
            Err(source) => {
                return Err(KeyError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let (set, updated_by) = parse_keys(path, &bytes, previous)?;
        Ok(KeyFileState::Loaded(LoadedKeys {
            set: Arc::new(set),
            updated_by,
            digest: digest_of(&bytes),
        }))
    }

    /// Whether keys read from this file must be rewritten to match `key_storage` (plain keys in a
    /// state file configured as hashed): the hashed set and the file's new bytes.
    pub fn conversion(&self, set: &KeySet) -> Option<(KeySet, Zeroizing<Vec<u8>>)> {
        match &self.source {
            KeySource::State {
                storage: KeyStorage::Hashed,
                ..
            } if set.is_plain() => {
                let mut hashed = clone_set(set);
                strip_plain(&mut hashed);
                let bytes = render_file(&hashed, "scoregate");
                Some((hashed, bytes))
            }
            KeySource::State {
                storage: KeyStorage::Plain,
                path,
            } if !set.is_plain() => {
                tracing::warn!(
                    file = %path.display(),
                    "keys are stored hashed although key_storage is \"plain\"; regenerate both keys to store them plain again"
                );
                None
            }
            _ => None,
        }
    }

    /// Two new random keys for a state-directory file, as stored (hashed storage keeps digests
    /// only), and the file's bytes. Nothing is written here.
    pub fn generate(&self) -> Result<(KeySet, Zeroizing<Vec<u8>>), KeyError> {
        let material = Material::Plain([generate_key()?, generate_key()?]);
        let mut set = KeySet::build(material, None)?;
        if matches!(
            self.source,
            KeySource::State {
                storage: KeyStorage::Hashed,
                ..
            }
        ) {
            strip_plain(&mut set);
        }
        let bytes = render_file(&set, "scoregate");
        Ok((set, bytes))
    }

    /// Replaces one slot's key (generated, or `value`) in `current`: the new set, what the
    /// caller is shown, and the file's new bytes. Pure: the caller writes the bytes.
    pub fn regenerate(
        &self,
        current: &KeySet,
        slot: KeySlot,
        value: Option<Secret>,
        initiator: &str,
    ) -> Result<(KeySet, NewKeys, Zeroizing<Vec<u8>>), KeyError> {
        let KeySource::State { storage, .. } = &self.source else {
            return Err(KeyError::ReadOnly {
                path: self.source.path().to_owned(),
            });
        };
        if let Some(v) = &value {
            validate_key_value(v.expose()).map_err(KeyError::BadValue)?;
        }
        let new_key = match value {
            Some(v) => v,
            None => generate_key()?,
        };
        let i = KeySet::index(slot);
        let other = &current.slots[1 - i];
        let new_digest = salted_digest(&current.salt, new_key.expose().as_bytes());
        if bool::from(new_digest.ct_eq(&other.digest)) {
            return Err(KeyError::BadValue("must differ from the other key"));
        }
        let fresh = Slot {
            digest: new_digest,
            plain: (*storage == KeyStorage::Plain || other.plain.is_some())
                .then(|| new_key.clone()),
            last_used: Arc::new(AtomicU64::new(0)),
        };
        let kept = Slot {
            digest: other.digest,
            plain: other.plain.clone(),
            last_used: Arc::clone(&other.last_used),
        };
        let mut set = KeySet {
            salt: current.salt,
            slots: if i == 0 { [fresh, kept] } else { [kept, fresh] },
        };
        if *storage == KeyStorage::Hashed {
            strip_plain(&mut set);
        }
        let bytes = render_file(&set, initiator);
        let shown = if set.is_plain() {
            NewKeys {
                primary: set.slots[0].plain.clone(),
                secondary: set.slots[1].plain.clone(),
            }
        } else {
            // Hashed: the new key is shown this once; the other cannot be shown.
            match slot {
                KeySlot::Primary => NewKeys {
                    primary: Some(new_key),
                    secondary: None,
                },
                KeySlot::Secondary => NewKeys {
                    primary: None,
                    secondary: Some(new_key),
                },
            }
        };
        Ok((set, shown, bytes))
    }

    /// Writes the file atomically (0600), creating its directory (0700) if needed.
    pub fn write(&self, bytes: &[u8]) -> Result<(), KeyError> {
        persist(self.source.path(), bytes)
    }
}

impl crate::source::Source for KeyFile {
    type Value = KeyFileState;
    type Error = KeyError;

    fn observe(&self) -> crate::source::Version {
        match &self.shared {
            Some(shared) => vec![shared.stamp()],
            None => vec![Fingerprint::of(self.source.path())],
        }
    }

    fn load(&self, previous: Option<&KeyFileState>) -> Result<KeyFileState, KeyError> {
        self.read(previous.and_then(KeyFileState::keys).map(AsRef::as_ref))
    }

    fn same(current: &KeyFileState, new: &KeyFileState) -> bool {
        match (current, new) {
            (KeyFileState::Loaded(a), KeyFileState::Loaded(b)) => a.digest == b.digest,
            (KeyFileState::Absent, KeyFileState::Absent) => true,
            _ => false,
        }
    }
}

/// A key file's bytes as a key set, and who wrote the file if it says (`path` only names the
/// file in errors). What [`KeyFile::read`] does once it has the bytes; `fuzzing` calls it too.
pub(crate) fn parse_keys(
    path: &Path,
    bytes: &[u8],
    previous: Option<&KeySet>,
) -> Result<(KeySet, Option<String>), KeyError> {
    let (material, updated_by) = parse_file(path, bytes)?;
    Ok((KeySet::build(material, previous)?, updated_by))
}

fn strip_plain(set: &mut KeySet) {
    for slot in &mut set.slots {
        slot.plain = None;
    }
}

fn clone_set(set: &KeySet) -> KeySet {
    let slot = |s: &Slot| Slot {
        digest: s.digest,
        plain: s.plain.clone(),
        last_used: Arc::clone(&s.last_used),
    };
    KeySet {
        salt: set.salt,
        slots: [slot(&set.slots[0]), slot(&set.slots[1])],
    }
}

fn digest_of(bytes: &[u8]) -> [u8; 32] {
    super::sha256(&[bytes])
}

fn persist(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        crate::state::ensure_state_dir(dir).map_err(write_err)?;
    }
    write_atomic(path, bytes, 0o600).map_err(write_err)
}

mod file;
#[cfg(test)]
mod tests;
