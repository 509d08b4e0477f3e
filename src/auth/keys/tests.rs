use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::source::{Change, Source, Watched};

/// A key file as the reload loop drives it: read at start (generated and written first when a
/// state file is missing, converted when the storage setting says hashed), written by a
/// management regeneration, and picked up again by observing the file.
#[derive(Debug)]
struct KeyStore {
    watched: Watched<KeyFile>,
}

/// What a poll of the file found.
#[derive(Debug)]
enum Reloaded {
    Applied { updated_by: Option<String> },
}

impl KeyStore {
    fn open(source: KeySource) -> Result<Self, KeyError> {
        let mut watched = Watched::open(KeyFile::new(source))?;
        let file = watched.source().clone();
        let generated = match watched.value().keys() {
            None => Some(file.generate()?),
            Some(set) => file.conversion(set),
        };
        if let Some((set, bytes)) = generated {
            file.write(&bytes)?;
            watched.replace(
                file.observe(),
                KeyFileState::written(Arc::new(set), &bytes, "scoregate"),
            );
        }
        Ok(Self { watched })
    }

    fn set(&self) -> &KeySet {
        self.watched.value().keys().expect("keys are loaded")
    }

    fn verify(&self, presented: &[u8]) -> Option<KeySlot> {
        self.set().verify(presented)
    }

    fn list(&self) -> Result<KeyListing, KeyError> {
        self.set().list()
    }

    fn last_used(&self) -> [Option<u64>; 2] {
        self.set().last_used()
    }

    fn regenerate(
        &mut self,
        slot: KeySlot,
        value: Option<Secret>,
        initiator: &str,
    ) -> Result<NewKeys, KeyError> {
        let file = self.watched.source().clone();
        let (_, shown, bytes) = file.regenerate(self.set(), slot, value, initiator)?;
        file.write(&bytes)?;
        match self.watched.poll() {
            Change::Applied => Ok(shown),
            Change::Rejected(e) => Err(e),
            Change::None => panic!("the write was not observed"),
        }
    }

    fn poll_file(&mut self) -> Option<Result<Reloaded, KeyError>> {
        match self.watched.poll() {
            Change::None => None,
            Change::Applied => Some(Ok(Reloaded::Applied {
                updated_by: match &**self.watched.value() {
                    KeyFileState::Loaded(l) => l.updated_by.clone(),
                    KeyFileState::Absent => None,
                },
            })),
            Change::Rejected(e) => Some(Err(e)),
        }
    }
}

fn state(dir: &Path, storage: KeyStorage) -> KeySource {
    KeySource::State {
        path: KeySource::state_path(dir, "iris"),
        storage,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

#[test]
fn generates_two_distinct_strong_keys_persisted_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::open(state(dir.path(), KeyStorage::Plain)).expect("open");
    let keys = store.list().expect("list");
    for k in [&keys.primary, &keys.secondary] {
        assert_eq!(k.expose().len(), 43, "256 bits as unpadded base64url");
        assert!(
            k.expose()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
    assert_ne!(keys.primary, keys.secondary);
    let path = KeySource::state_path(dir.path(), "iris");
    assert_eq!(mode(&path), 0o600);
    // Reopening reads the same keys back.
    let again = KeyStore::open(state(dir.path(), KeyStorage::Plain)).expect("reopen");
    assert_eq!(again.list().expect("list").primary, keys.primary);
}

#[test]
fn verify_matches_slots_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::open(state(dir.path(), KeyStorage::Plain)).expect("open");
    let keys = store.list().expect("list");
    assert_eq!(
        store.verify(keys.primary.expose().as_bytes()),
        Some(KeySlot::Primary)
    );
    assert_eq!(
        store.verify(keys.secondary.expose().as_bytes()),
        Some(KeySlot::Secondary)
    );
    let p = keys.primary.expose();
    assert_eq!(store.verify(&p.as_bytes()[..p.len() - 1]), None);
    assert_eq!(store.verify(format!("{p}x").as_bytes()), None);
    assert_eq!(store.verify(p.to_uppercase().as_bytes()), None);
    assert_eq!(store.verify(b""), None);
    let used = store.last_used();
    assert!(used[0].is_some() && used[1].is_some());
}

#[test]
fn regenerate_replaces_one_slot_and_keeps_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = KeyStore::open(state(dir.path(), KeyStorage::Plain)).expect("open");
    let before = store.list().expect("list");
    store.verify(before.primary.expose().as_bytes());
    let new = store
        .regenerate(KeySlot::Secondary, None, "test")
        .expect("regen");
    let new_secondary = new.secondary.expect("shown");
    assert_eq!(new.primary.as_ref(), Some(&before.primary));
    assert_eq!(store.verify(before.secondary.expose().as_bytes()), None);
    assert_eq!(
        store.verify(new_secondary.expose().as_bytes()),
        Some(KeySlot::Secondary)
    );
    assert_eq!(
        store.verify(before.primary.expose().as_bytes()),
        Some(KeySlot::Primary)
    );
    let listing = store.list().expect("list");
    assert!(
        listing.primary_last_used.is_some(),
        "untouched slot keeps its history"
    );
    // Persisted: a fresh open sees the new secondary.
    let reopened = KeyStore::open(state(dir.path(), KeyStorage::Plain)).expect("reopen");
    assert_eq!(reopened.list().expect("list").secondary, new_secondary);
}

#[test]
fn chosen_values_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = KeyStore::open(state(dir.path(), KeyStorage::Plain)).expect("open");
    let primary = store.list().expect("list").primary;
    for (value, why) in [
        ("short", "must be at least 32 characters"),
        (
            "has a space in it which is not allowed at all",
            "must be printable ASCII without spaces",
        ),
        (primary.expose(), "must differ from the other key"),
    ] {
        let err = store
            .regenerate(
                KeySlot::Secondary,
                Some(Secret::new(value.to_owned())),
                "test",
            )
            .expect_err(value);
        assert!(
            matches!(err, KeyError::BadValue(w) if w == why),
            "{value}: {err}"
        );
    }
    let chosen = "a-chosen-key-of-forty-characters-length!";
    store
        .regenerate(
            KeySlot::Secondary,
            Some(Secret::new(chosen.to_owned())),
            "test",
        )
        .expect("valid chosen key");
    assert_eq!(store.verify(chosen.as_bytes()), Some(KeySlot::Secondary));
}

#[test]
fn hashed_storage_keeps_no_plain_key_anywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = KeyStore::open(state(dir.path(), KeyStorage::Hashed)).expect("open");
    assert!(matches!(store.list(), Err(KeyError::Hashed)));
    let new = store
        .regenerate(KeySlot::Primary, None, "test")
        .expect("regen");
    let shown = new.primary.expect("new key shown once");
    assert!(new.secondary.is_none());
    assert_eq!(
        store.verify(shown.expose().as_bytes()),
        Some(KeySlot::Primary)
    );
    let text = std::fs::read_to_string(KeySource::state_path(dir.path(), "iris")).expect("read");
    assert!(!text.contains(shown.expose()), "{text}");
    assert!(text.contains("\"storage\": \"hashed\""), "{text}");
    assert!(!text.contains("primaryKey\""), "{text}");
}

#[test]
fn plain_state_is_converted_when_storage_becomes_hashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = KeyStore::open(state(dir.path(), KeyStorage::Plain))
        .expect("open")
        .list()
        .expect("list");
    let store = KeyStore::open(state(dir.path(), KeyStorage::Hashed)).expect("reopen hashed");
    assert_eq!(
        store.verify(keys.primary.expose().as_bytes()),
        Some(KeySlot::Primary)
    );
    let text = std::fs::read_to_string(KeySource::state_path(dir.path(), "iris")).expect("read");
    assert!(!text.contains(keys.primary.expose()));
}

#[test]
fn operator_files_are_read_only_and_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.json");
    let missing = KeyStore::open(KeySource::OperatorFile { path: path.clone() });
    assert!(matches!(missing, Err(KeyError::Read { .. })));
    std::fs::write(&path, r#"{"primaryKey":"short","secondaryKey":"x"}"#).expect("write");
    let err = KeyStore::open(KeySource::OperatorFile { path: path.clone() }).expect_err("short");
    assert!(
        err.to_string()
            .contains("primaryKey must be at least 32 characters"),
        "{err}"
    );
    let p = "p".repeat(32);
    let s = "s".repeat(32);
    std::fs::write(
        &path,
        format!(r#"{{"primaryKey":"{p}","secondaryKey":"{s}"}}"#),
    )
    .expect("write");
    let mut store = KeyStore::open(KeySource::OperatorFile { path }).expect("valid");
    assert_eq!(store.verify(s.as_bytes()), Some(KeySlot::Secondary));
    assert!(matches!(
        store.regenerate(KeySlot::Primary, None, "test"),
        Err(KeyError::ReadOnly { .. })
    ));
}

#[test]
fn poll_applies_changes_and_keeps_last_good_keys_on_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.json");
    let (p1, s1, p2) = ("1".repeat(32), "2".repeat(32), "3".repeat(32));
    std::fs::write(
        &path,
        format!(r#"{{"primaryKey":"{p1}","secondaryKey":"{s1}"}}"#),
    )
    .expect("write");
    let mut store = KeyStore::open(KeySource::OperatorFile { path: path.clone() }).expect("open");
    assert!(store.poll_file().is_none(), "no change yet");

    // An editor's rename-over-file.
    let tmp = dir.path().join("keys.json.new");
    std::fs::write(
        &tmp,
        format!(r#"{{"primaryKey":"{p2}","secondaryKey":"{s1}"}}"#),
    )
    .expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    assert!(matches!(
        store.poll_file(),
        Some(Ok(Reloaded::Applied { updated_by: None }))
    ));
    assert_eq!(store.verify(p2.as_bytes()), Some(KeySlot::Primary));
    assert_eq!(store.verify(p1.as_bytes()), None);

    std::fs::write(&tmp, "{not json").expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    assert!(matches!(
        store.poll_file(),
        Some(Err(KeyError::Invalid { .. }))
    ));
    assert_eq!(
        store.verify(p2.as_bytes()),
        Some(KeySlot::Primary),
        "last good keys stay"
    );
    assert!(
        store.poll_file().is_none(),
        "a rejected file is not re-reported every poll"
    );
}

#[test]
fn debug_output_never_shows_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::open(state(dir.path(), KeyStorage::Plain)).expect("open");
    let keys = store.list().expect("list");
    let debug = format!("{store:?} {keys:?}");
    assert!(!debug.contains(keys.primary.expose()), "{debug}");
    assert!(!debug.contains(keys.secondary.expose()), "{debug}");
}
