//! Management writes: each one writes its source under the reload lock and then runs a cycle, so
//! the change is applied through the same observe path as an operator's edit, and the call
//! answers only once the state that holds it is published.
//!
//! Before writing, a cycle applies whatever changed on disk since the last poll (the offline CLI,
//! an operator), so a write is made on top of that change, not over it.
//!
//! In fleet mode the source is an etcd key: the new value is planned under the lock from the
//! applied one, then written by a transaction that succeeds only if the key is still at the mod
//! revision that value was read at (or, for a new role assignment, does not exist yet), and the
//! call waits until the watch has brought the commit back and a cycle has applied it. A write
//! that etcd cannot take changes nothing and fails with `cluster_unavailable`; one that lost a
//! race with another replica's write fails with a conflict and changes nothing either.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use zeroize::Zeroizing;

use super::sources::Sources;
use super::{Applier, Own, Trigger};
use crate::auth::KeySlot;
use crate::auth::jwt::signing::SigningError;
use crate::auth::keys::{KeyError, NewKeys, Secret};
use crate::cluster::{ClusterError, SharedKey};

/// How long a committed fleet write waits for its change to be applied here.
const APPLY_LIMIT: Duration = Duration::from_secs(10);
use crate::policy::Assignment;
use crate::runtime::assignments::AssignmentError;

/// Why a management write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The service is not (or no longer) configured with that kind of source.
    #[error("service {0:?} has no such source")]
    Gone(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    Assignments(#[from] AssignmentError),
    /// Fleet mode: etcd could not take the write, or another replica wrote first.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the write task failed")]
    Task,
}

/// What a planned write does.
enum Plan<T> {
    /// A file was written; a cycle applies it.
    Local(T),
    /// An etcd transaction to run, then wait for.
    Shared { out: T, op: SharedOp },
}

/// A fleet-mode write to etcd.
enum SharedOp {
    /// Seal and put `bytes` if the key is still at `expected` (0: absent).
    Put {
        key: SharedKey,
        expected: i64,
        bytes: Zeroizing<Vec<u8>>,
    },
    /// Create a plain (not secret) value; the key must not exist.
    Create { key: SharedKey, bytes: Vec<u8> },
    /// Delete the key if it is still at `expected`.
    Delete { key: SharedKey, expected: i64 },
}

impl SharedOp {
    /// Runs the transaction; the commit revision.
    async fn run(self) -> Result<(i64, SharedKey), ClusterError> {
        match self {
            Self::Put {
                key,
                expected,
                bytes,
            } => Ok((key.put_if(expected, &bytes).await?, key)),
            Self::Create { key, bytes } => {
                let client = &key.cluster.client;
                match client.create(&key.key, bytes, 0).await? {
                    crate::cluster::etcd::Txn::Committed(r) => Ok((r, key)),
                    crate::cluster::etcd::Txn::Conflict { .. } => {
                        Err(ClusterError::Conflict(key.key.clone()))
                    }
                }
            }
            Self::Delete { key, expected } => {
                let client = &key.cluster.client;
                match client.compare_and_delete(&key.key, expected).await? {
                    crate::cluster::etcd::Txn::Committed(r) => Ok((r, key)),
                    crate::cluster::etcd::Txn::Conflict { .. } => {
                        Err(ClusterError::Conflict(key.key.clone()))
                    }
                }
            }
        }
    }
}

/// The mod revision a shared source's applied value was read at (0: absent).
/// A whole-value write of one source: in fleet mode a put guarded by the revision this replica
/// applied, else the file written here.
fn put_or_write<T, E>(
    shared: Option<&crate::cluster::SharedKey>,
    seen: &crate::source::Version,
    bytes: zeroize::Zeroizing<Vec<u8>>,
    out: T,
    write: impl FnOnce(&[u8]) -> Result<(), E>,
) -> Result<Plan<T>, WriteError>
where
    WriteError: From<E>,
{
    if let Some(key) = shared {
        let op = SharedOp::Put {
            key: key.clone(),
            expected: applied_revision(seen),
            bytes,
        };
        return Ok(Plan::Shared { out, op });
    }
    write(&bytes)?;
    Ok(Plan::Local(out))
}

fn applied_revision(seen: &crate::source::Version) -> i64 {
    seen.first()
        .copied()
        .flatten()
        .and_then(|f| f.as_revision())
        .unwrap_or(0)
}

impl Applier {
    /// Plans `write` on the sources after a cycle; a local write is applied by a second cycle,
    /// a fleet write is committed in etcd and waited for (see the module docs).
    async fn write<T: Send + 'static>(
        &self,
        own: Own,
        op: &'static str,
        write: impl FnOnce(&Sources) -> Result<Plan<T>, WriteError> + Send + 'static,
    ) -> Result<T, WriteError> {
        let planned = {
            let _serial = self.inner.serial.lock().await;
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || {
                let mut sources = inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
                inner.cycle(&mut sources, &Trigger::Poll);
                let plan = write(&sources)?;
                if matches!(plan, Plan::Local(_)) {
                    inner.cycle(&mut sources, &Trigger::OwnWrite(own));
                }
                Ok::<_, WriteError>(plan)
            })
            .await
            .map_err(|_| WriteError::Task)??
        };
        match planned {
            Plan::Local(out) => Ok(out),
            Plan::Shared { out, op: shared } => {
                let result = async {
                    let (revision, key) = shared.run().await?;
                    if key.cluster.wait_applied(revision, APPLY_LIMIT).await {
                        Ok(())
                    } else {
                        Err(ClusterError::NotApplied(revision))
                    }
                }
                .await;
                if let Some(cluster) = self.cluster() {
                    let outcome = match &result {
                        Ok(()) => "committed",
                        Err(ClusterError::Conflict(_)) => "conflict",
                        Err(e) if e.is_unavailable() => "unavailable",
                        Err(_) => "error",
                    };
                    cluster
                        .metrics
                        .writes
                        .with_label_values(&[op, outcome])
                        .inc();
                }
                result?;
                Ok(out)
            }
        }
    }

    /// Replaces one key of a key-mode service (generated, or `value`).
    pub async fn regenerate_key(
        &self,
        service: &str,
        slot: KeySlot,
        value: Option<Secret>,
        initiator: &str,
    ) -> Result<NewKeys, WriteError> {
        let (name, initiator) = (service.to_owned(), initiator.to_owned());
        self.write(Own::Keys(name.clone()), "regenerateKeys", move |sources| {
            let watched = sources
                .keys
                .get(&name)
                .ok_or_else(|| WriteError::Gone(name.clone()))?;
            let file = watched.source();
            let current = watched
                .value()
                .keys()
                .ok_or_else(|| WriteError::Gone(name.clone()))?;
            let (_, shown, bytes) = file.regenerate(current, slot, value, &initiator)?;
            put_or_write(file.shared.as_ref(), watched.seen(), bytes, shown, |b| {
                file.write(b)
            })
        })
        .await
    }

    /// Makes a new signing key the signer of a token-mode service; returns its kid.
    pub async fn rotate_signing_key(
        &self,
        service: &str,
        initiator: &str,
    ) -> Result<Arc<str>, WriteError> {
        let (name, initiator) = (service.to_owned(), initiator.to_owned());
        self.write(
            Own::Signing(name.clone()),
            "rotateSigningKey",
            move |sources| {
                let watched = sources
                    .signing
                    .get(&name)
                    .ok_or_else(|| WriteError::Gone(name.clone()))?;
                let file = watched.source();
                let current = watched
                    .value()
                    .set()
                    .ok_or_else(|| WriteError::Gone(name.clone()))?;
                let (_, kid, bytes) = file.rotate(current, &initiator)?;
                put_or_write(file.shared.as_ref(), watched.seen(), bytes, kid, |b| {
                    file.write(b)
                })
            },
        )
        .await
    }

    /// Adds a role assignment made through the API.
    pub async fn add_assignment(&self, assignment: Assignment) -> Result<(), WriteError> {
        self.write(Own::Assignments, "addRoleAssignment", move |sources| {
            let file = sources.assignments.source();
            if let Some(prefix) = &file.shared {
                // One key per assignment: concurrent adds never conflict.
                let key = SharedKey {
                    cluster: Arc::clone(&prefix.cluster),
                    key: format!("{}{}", prefix.key, assignment.id),
                };
                let bytes = serde_json::to_vec(&assignment).unwrap_or_default();
                return Ok(Plan::Shared {
                    out: (),
                    op: SharedOp::Create { key, bytes },
                });
            }
            let mut list = sources.assignments.value().as_ref().clone();
            list.push(assignment);
            file.write(&list)?;
            Ok(Plan::Local(()))
        })
        .await
    }

    /// Removes an API role assignment; false when there is none with that id.
    pub async fn remove_assignment(&self, id: &str) -> Result<bool, WriteError> {
        let id = id.to_owned();
        self.write(Own::Assignments, "removeRoleAssignment", move |sources| {
            let file = sources.assignments.source();
            let mut list = sources.assignments.value().as_ref().clone();
            let before = list.len();
            list.retain(|a| a.id != id);
            if list.len() == before {
                return Ok(Plan::Local(false));
            }
            if let Some(prefix) = &file.shared {
                let key = SharedKey {
                    cluster: Arc::clone(&prefix.cluster),
                    key: format!("{}{id}", prefix.key),
                };
                let expected = key.mod_revision();
                return Ok(Plan::Shared {
                    out: true,
                    op: SharedOp::Delete { key, expected },
                });
            }
            file.write(&list)?;
            Ok(Plan::Local(true))
        })
        .await
    }
}
