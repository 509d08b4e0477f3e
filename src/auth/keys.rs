//! The primary/secondary key store of a key-mode service.
//!
//! Hot path: [`KeyStore::verify`] loads the current [`KeySet`] snapshot lock-free (`ArcSwap`),
//! hashes the presented credential once (SHA-256 over a per-file salt and the key) and compares
//! the fixed-size digest with both slots in constant time (`subtle`). Keys never leave this module
//! except through [`KeyListing`] (for `listkeys`) and [`NewKeys`] (for `regenerateKeys`); the
//! [`Secret`] wrapper redacts them from `Debug` and zeroes them on drop.
//!
//! Storage: generated keys live in `state_dir/keys/<service>.json` (0600, atomic writes), either
//! in plain text or, with `key_storage = "hashed"`, as salted digests only. An operator may
//! instead provide a read-only `keys_file` (e.g. a Kubernetes Secret volume). Either file is
//! polled for changes ([`KeyStore::poll_file`]); a bad new file leaves the last good keys in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::KeySlot;
use crate::state::write_atomic;
use crate::watch::Fingerprint;
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

/// How generated keys are kept at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyStorage {
    /// Plain text in the 0600 state file; `listkeys` can show them.
    #[default]
    Plain,
    /// Salted SHA-256 digests only; a key is shown once, when it is generated.
    Hashed,
}

/// Where a service's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Generated and managed by scoregate in the state directory.
    State { path: PathBuf, storage: KeyStorage },
    /// Provided by the operator; scoregate only reads it.
    OperatorFile { path: PathBuf },
}

impl KeySource {
    pub fn path(&self) -> &Path {
        match self {
            Self::State { path, .. } | Self::OperatorFile { path } => path,
        }
    }

    /// The state-directory file for a service.
    pub fn state_path(state_dir: &Path, service: &str) -> PathBuf {
        state_dir.join("keys").join(format!("{service}.json"))
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

    fn last_used(&self, slot: KeySlot) -> Option<u64> {
        match self.slots[Self::index(slot)]
            .last_used
            .load(Ordering::Relaxed)
        {
            0 => None,
            t => Some(t),
        }
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

/// A service's keys, their source, and the bookkeeping for reloads.
#[derive(Debug)]
pub struct KeyStore {
    current: ArcSwap<KeySet>,
    source: KeySource,
    /// Serialises writers (API, file reloads) so a reload cannot interleave with a regeneration.
    write: Mutex<WriterState>,
}

#[derive(Debug, Default)]
struct WriterState {
    /// The file as last applied, to tell real changes from our own writes and metadata noise.
    fingerprint: Option<Fingerprint>,
    content: Option<[u8; 32]>,
    /// A change found on disk by `regenerate` that the watch loop has not reported yet.
    unreported: Option<Result<Reloaded, KeyError>>,
}

/// The result of a file poll that found a change.
#[derive(Debug)]
pub enum Reloaded {
    /// New keys are in force; the file names who wrote it, if it says.
    Applied { updated_by: Option<String> },
    /// The file changed on disk but its content is what is already in force.
    Unchanged,
}

impl KeyStore {
    /// Loads the keys, generating and persisting both when a state-directory service has none.
    pub fn open(source: KeySource) -> Result<Self, KeyError> {
        let path = source.path().to_owned();
        // Fingerprint before reading, so a file replaced in between is still seen as changed.
        let mut fingerprint = Fingerprint::of(&path);
        let (set, content) = match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let (material, _) = parse_file(&path, &bytes)?;
                let set = Self::build(material, None)?;
                (set, digest_of(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match &source {
                KeySource::OperatorFile { .. } => return Err(KeyError::Read { path, source: e }),
                KeySource::State { storage, .. } => {
                    let material = Material::Plain([generate_key()?, generate_key()?]);
                    let mut set = Self::build(material, None)?;
                    if *storage == KeyStorage::Hashed {
                        strip_plain(&mut set);
                    }
                    let bytes = render_file(&set, "scoregate");
                    persist(&path, &bytes)?;
                    fingerprint = Fingerprint::of(&path);
                    tracing::info!(file = %path.display(), "generated primary and secondary keys");
                    (set, digest_of(&bytes))
                }
            },
            Err(e) => return Err(KeyError::Read { path, source: e }),
        };
        let store = Self {
            current: ArcSwap::from_pointee(set),
            write: Mutex::new(WriterState {
                fingerprint,
                content: Some(content),
                unreported: None,
            }),
            source,
        };
        store.convert_storage_if_needed()?;
        Ok(store)
    }

    /// A plain state file under `key_storage = "hashed"` is rewritten without the plain keys.
    fn convert_storage_if_needed(&self) -> Result<(), KeyError> {
        let KeySource::State { path, storage } = &self.source else {
            return Ok(());
        };
        let set = self.current.load();
        let is_plain = set.slots[0].plain.is_some();
        match (storage, is_plain) {
            (KeyStorage::Hashed, true) => {
                let mut state = self.lock();
                let mut hashed = clone_set(&set);
                strip_plain(&mut hashed);
                let bytes = render_file(&hashed, "scoregate");
                persist(path, &bytes)?;
                state.content = Some(digest_of(&bytes));
                state.fingerprint = Fingerprint::of(path);
                self.current.store(Arc::new(hashed));
                tracing::info!(file = %path.display(), "converted stored keys to hashed storage");
            }
            (KeyStorage::Plain, false) => tracing::warn!(
                file = %path.display(),
                "keys are stored hashed although key_storage is \"plain\"; regenerate both keys to store them plain again"
            ),
            _ => {}
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // A panic while holding this lock cannot leave inconsistent state (all writes are
        // atomic file renames followed by one pointer swap), so poisoning is ignored.
        self.write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn build(material: Material, previous: Option<&KeySet>) -> Result<KeySet, KeyError> {
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
                // Keep the salt when possible so unchanged slots keep their digests (and history).
                let salt = previous.map_or_else(new_salt, |p| Ok(p.salt))?;
                let dp = salted_digest(&salt, p.expose().as_bytes());
                let ds = salted_digest(&salt, s.expose().as_bytes());
                KeySet {
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
                let carry_if = |i: usize| {
                    if same_salt {
                        carry(&digests[i], i)
                    } else {
                        Arc::new(AtomicU64::new(0))
                    }
                };
                KeySet {
                    salt,
                    slots: [
                        Slot {
                            last_used: carry_if(0),
                            digest: digests[0],
                            plain: None,
                        },
                        Slot {
                            last_used: carry_if(1),
                            digest: digests[1],
                            plain: None,
                        },
                    ],
                }
            }
        })
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The data-plane check: which slot, if any, the presented key matches.
    pub fn verify(&self, presented: &[u8]) -> Option<KeySlot> {
        self.current.load().verify(presented)
    }

    /// Both keys and when they were last used (`listkeys`).
    pub fn list(&self) -> Result<KeyListing, KeyError> {
        let set = self.current.load();
        match (&set.slots[0].plain, &set.slots[1].plain) {
            (Some(p), Some(s)) => Ok(KeyListing {
                primary: p.clone(),
                secondary: s.clone(),
                primary_last_used: set.last_used(KeySlot::Primary),
                secondary_last_used: set.last_used(KeySlot::Secondary),
            }),
            _ => Err(KeyError::Hashed),
        }
    }

    /// When each slot last matched (also available in hashed mode).
    pub fn last_used(&self) -> [Option<u64>; 2] {
        let set = self.current.load();
        [
            set.last_used(KeySlot::Primary),
            set.last_used(KeySlot::Secondary),
        ]
    }

    /// Replaces one slot's key (generated, or `value`), persists the file, then swaps the
    /// in-memory set, so the change survives a crash and applies to the very next request.
    pub fn regenerate(
        &self,
        slot: KeySlot,
        value: Option<Secret>,
        initiator: &str,
    ) -> Result<NewKeys, KeyError> {
        let KeySource::State { path, storage } = &self.source else {
            return Err(KeyError::ReadOnly {
                path: self.source.path().to_owned(),
            });
        };
        if let Some(v) = &value {
            validate_key_value(v.expose()).map_err(KeyError::BadValue)?;
        }
        let mut state = self.lock();
        // Another process (the offline CLI, an operator) may have changed the file since the
        // last poll: apply that first, so this change is made on top of it, not over it. The
        // watch loop still gets to report it.
        if let Some(seen) = self.refresh_locked(&mut state)
            && !matches!(seen, Ok(Reloaded::Unchanged))
        {
            state.unreported = Some(seen);
        }
        let old = self.current.load_full();
        let new_key = match value {
            Some(v) => v,
            None => generate_key()?,
        };
        let i = KeySet::index(slot);
        let other = &old.slots[1 - i];
        let new_digest = salted_digest(&old.salt, new_key.expose().as_bytes());
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
            salt: old.salt,
            slots: if i == 0 { [fresh, kept] } else { [kept, fresh] },
        };
        if *storage == KeyStorage::Hashed {
            strip_plain(&mut set);
        }
        let bytes = render_file(&set, initiator);
        persist(path, &bytes)?;
        state.content = Some(digest_of(&bytes));
        state.fingerprint = Fingerprint::of(path);
        let shown = |s: &Slot| s.plain.clone();
        let response = if set.slots[0].plain.is_some() {
            NewKeys {
                primary: shown(&set.slots[0]),
                secondary: shown(&set.slots[1]),
            }
        } else {
            // Hashed: the new key is shown this once; the other cannot be shown.
            let shown_new = Some(new_key);
            match slot {
                KeySlot::Primary => NewKeys {
                    primary: shown_new,
                    secondary: None,
                },
                KeySlot::Secondary => NewKeys {
                    primary: None,
                    secondary: shown_new,
                },
            }
        };
        self.current.store(Arc::new(set));
        Ok(response)
    }

    /// Checks the key file for a change (content, or a new inode as after a Kubernetes `..data`
    /// symlink swap or an editor's rename) and applies it. `None` when nothing changed. On error
    /// the last good keys stay in force.
    pub fn poll_file(&self) -> Option<Result<Reloaded, KeyError>> {
        let mut state = self.lock();
        if let Some(seen) = state.unreported.take() {
            return Some(seen);
        }
        self.refresh_locked(&mut state)
    }

    /// Applies the file if it changed since it was last read or written by us.
    fn refresh_locked(&self, state: &mut WriterState) -> Option<Result<Reloaded, KeyError>> {
        let path = self.source.path();
        let now = Fingerprint::of(path);
        if now == state.fingerprint {
            return None;
        }
        state.fingerprint = now;
        let result = std::fs::read(path)
            .map_err(|source| KeyError::Read {
                path: path.to_owned(),
                source,
            })
            .and_then(|bytes| {
                let bytes = Zeroizing::new(bytes);
                let digest = digest_of(&bytes);
                if state.content == Some(digest) {
                    return Ok(Reloaded::Unchanged);
                }
                let (material, updated_by) = parse_file(path, &bytes)?;
                let set = Self::build(material, Some(&self.current.load()))?;
                self.current.store(Arc::new(set));
                state.content = Some(digest);
                Ok(Reloaded::Applied { updated_by })
            });
        Some(result)
    }
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
