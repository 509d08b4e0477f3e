//! `state_dir/role-assignments.json` (in fleet mode, one etcd key per assignment): the role
//! assignments made through the management API, as a source of the runtime state. The
//! assignments themselves are `policy` data; where they are stored is the runtime's business
//! (which keeps `policy` free of storage and of `cluster`).

use std::path::{Path, PathBuf};

use crate::policy::Assignment;

/// `state_dir/role-assignments.json`: the assignments made through the API. A source of the
/// runtime state; the API's add and remove write it atomically and the change arrives through the
/// same observe path as an operator's edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentFile {
    pub path: PathBuf,
    /// Fleet mode: one etcd key per assignment under this prefix.
    pub shared: Option<crate::cluster::SharedKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AssignmentFile {
    pub const FILE: &'static str = "role-assignments.json";

    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(Self::FILE),
            shared: None,
        }
    }

    /// The assignments on disk (none when the file does not exist).
    pub fn read(&self) -> Result<Vec<Assignment>, AssignmentError> {
        if let Some(shared) = &self.shared {
            // One key per assignment: concurrent adds on different replicas never conflict.
            let mut list = Vec::new();
            for (key, bytes) in shared.read_prefix() {
                let a: Assignment =
                    serde_json::from_slice(&bytes).map_err(|e| AssignmentError::Read {
                        path: PathBuf::from(&key),
                        reason: e.to_string(),
                    })?;
                list.push(a);
            }
            return Ok(list);
        }
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AssignmentError::Read {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(AssignmentError::Read {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Writes the whole list atomically (0600).
    pub fn write(&self, list: &[Assignment]) -> Result<(), AssignmentError> {
        let mut bytes = serde_json::to_vec_pretty(list).unwrap_or_default();
        bytes.push(b'\n');
        crate::state::write_atomic(&self.path, &bytes, 0o600).map_err(|source| {
            AssignmentError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

impl crate::source::Source for AssignmentFile {
    type Value = Vec<Assignment>;
    type Error = AssignmentError;

    fn observe(&self) -> crate::source::Version {
        match &self.shared {
            Some(shared) => vec![shared.prefix_stamp()],
            None => vec![crate::source::Fingerprint::of(&self.path)],
        }
    }

    fn load(
        &self,
        _previous: Option<&Vec<Assignment>>,
    ) -> Result<Vec<Assignment>, AssignmentError> {
        self.read()
    }

    fn same(current: &Vec<Assignment>, new: &Vec<Assignment>) -> bool {
        current == new
    }
}
