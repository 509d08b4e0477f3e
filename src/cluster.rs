//! Fleet mode: N replicas share keys, signing keys, role assignments and the bootstrap admin
//! credential through an etcd namespace (`[cluster] backend = "etcd"`).
//!
//! etcd is one more source of the runtime state (STYLE §4). The sync loop ([`sync`]) keeps a
//! copy of the namespace (`mirror::Mirror`) from a full read and then a watch, and runs a
//! reload cycle after each change; the shared sources (key files, signing-key files, the admin
//! credential and role assignments, each bound to a [`SharedKey`]) observe and read that copy
//! instead of a file, so the one builder builds the state and the one cell swaps it. A
//! management write is a transaction in etcd (compare-and-swap on the value's mod revision, or
//! create-if-absent); the call answers once the watch has brought that revision back and a
//! cycle has applied it ([`Cluster::wait_applied`]). etcd is never on the scoring path.
//!
//! Layout under `/scoregate/<namespace>/` (values of secrets sealed, [`crate::seal`]): the shared
//! state under `state/` (watched): `state/keys/<service>`, `state/signing/<service>`,
//! `state/admin`, `state/assignments/<id>` (plain JSON), `state/seal-check` (proves every
//! replica uses the same seal key); `replicas/<instance>` (plain JSON, bound to a lease:
//! live replicas and the revision each has applied); and `activity/<time>-<instance>-<n>` (plain
//! JSON activity entries of management writes, bound to 30-day leases).
//!
//! - `proto`: the etcd v3 bindings `build.rs` generates with protox (no system `protoc`).
//! - [`etcd`]: a thin client: prefix reads with their revision, watches from a revision that
//!   report compaction, create-if-absent and compare-mod-revision transactions, leases.
//! - [`crate::seal`] (a leaf module, so `config` can read the seal key without importing
//!   `cluster`): AES-256-GCM sealing of every secret stored, with the etcd key as associated data.
//! - `mirror`: the local copy of the namespace and its sealed snapshot in `state_dir`.
//! - [`sync`]: the watch loop that feeds the copy and triggers the applier.
//! - [`unsynced`]: a replica that never synced waits for etcd, answering "not ready" meanwhile.
//! - [`trail`]: the fleet's audit trail of management writes (`GET /activity?scope=fleet`).

pub mod etcd;
mod mirror;
mod proto;
pub mod sync;
pub mod trail;
pub mod unsynced;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts};
use zeroize::Zeroizing;

use crate::config::EtcdConfig;
use crate::fingerprint::Fingerprint;
use crate::seal::SealError;
use etcd::{Client, EtcdError, Txn};
use mirror::Mirror;

/// The snapshot file in `state_dir`.
pub const SNAPSHOT_FILE: &str = "cluster-snapshot.json";
const SEAL_CHECK: &str = "seal-check";
/// What the namespace's `seal-check` value holds, sealed.
pub const SEAL_CHECK_TEXT: &[u8] = b"scoregate seal check v1";

/// Why a fleet-mode operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Another replica changed the value first.
    #[error("etcd key {0:?} was changed by another replica first")]
    Conflict(String),
    #[error(
        "cannot reach etcd ({0}) and this replica has never synced with it (no {SNAPSHOT_FILE} in state_dir): it will not invent its own keys"
    )]
    NeverSynced(String),
    #[error(
        "seal_key_file {path} does not match the seal key this namespace was created with ({source})"
    )]
    SealMismatch {
        path: String,
        #[source]
        source: SealError,
    },
    #[error("the change was committed at revision {0} but not applied here in time")]
    NotApplied(i64),
    #[error("snapshot {path}: {source}")]
    Snapshot {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterError {
    /// etcd cannot be reached now (the write changed nothing): `cluster_unavailable`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Etcd(e) => e.is_unavailable(),
            Self::NeverSynced(_) | Self::NotApplied(_) => true,
            Self::Seal(_)
            | Self::Conflict(_)
            | Self::SealMismatch { .. }
            | Self::Snapshot { .. } => false,
        }
    }
}

/// Fleet-mode series; registered only in fleet mode.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    pub connected: IntGauge,
    pub applied_revision: IntGauge,
    pub apply_seconds: Histogram,
    pub writes: IntCounterVec,
}

impl ClusterMetrics {
    /// Registers the fleet series in `r`, the process's registry (once per process).
    pub fn register(r: &prometheus::Registry) -> Self {
        let connected = IntGauge::new(
            "scoregate_cluster_connected",
            "1 while the watch on the etcd namespace is established",
        )
        .expect("static metric definition");
        let applied_revision = IntGauge::new(
            "scoregate_cluster_applied_revision",
            "The etcd revision this replica's runtime state reflects",
        )
        .expect("static metric definition");
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "scoregate_cluster_apply_seconds",
                "From a change arriving on the etcd watch to the state holding it being published",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("static metric definition");
        let writes = IntCounterVec::new(
            Opts::new(
                "scoregate_cluster_writes_total",
                "Management writes to etcd by operation and result",
            ),
            &["op", "result"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(applied_revision.clone()),
            Box::new(apply_seconds.clone()),
            Box::new(writes.clone()),
        ] {
            r.register(c).expect("metric names are unique");
        }
        Self {
            connected,
            applied_revision,
            apply_seconds,
            writes,
        }
    }
}

/// A fleet-mode replica's link to its namespace. Shared by the sources, the applier, the sync
/// loop and the admin plane.
#[derive(Debug)]
pub struct Cluster {
    pub config: Arc<EtcdConfig>,
    pub client: Client,
    pub mirror: Mirror,
    pub metrics: ClusterMetrics,
    applied: tokio::sync::watch::Sender<i64>,
    connected: AtomicBool,
    snapshot: PathBuf,
    /// Why the replica is not ready (never synced), if it is not.
    pub started_from_snapshot: bool,
}

impl Cluster {
    /// Connects and reads the namespace, or, with etcd unreachable, loads the sealed snapshot a
    /// previous run left in `state_dir`; checks the seal key against the namespace's.
    pub async fn open(
        config: Arc<EtcdConfig>,
        state_dir: &std::path::Path,
        metrics: &ClusterMetrics,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = Client::new(&config)?;
        let mirror = Mirror::default();
        let snapshot = state_dir.join(SNAPSHOT_FILE);
        let prefix = state_prefix(&config);
        let from_etcd = async {
            client.authenticate().await?;
            client.get_prefix(&prefix).await
        }
        .await;
        let started_from_snapshot = match from_etcd {
            Ok((kvs, revision)) => {
                mirror.replace(kvs, revision);
                false
            }
            Err(e) if e.is_unavailable() => {
                let loaded =
                    mirror
                        .load(&snapshot, &prefix)
                        .map_err(|source| ClusterError::Snapshot {
                            path: snapshot.display().to_string(),
                            source,
                        })?;
                if !loaded {
                    return Err(ClusterError::NeverSynced(e.to_string()));
                }
                tracing::warn!(error = %e, revision = mirror.revision(), "etcd is unreachable; starting from the local snapshot");
                true
            }
            Err(e) => return Err(e.into()),
        };
        let (applied, _) = tokio::sync::watch::channel(0);
        let cluster = Arc::new(Self {
            metrics: metrics.clone(),
            config,
            client,
            mirror,
            applied,
            connected: AtomicBool::new(!started_from_snapshot),
            snapshot,
            started_from_snapshot,
        });
        cluster.check_seal().await?;
        if !started_from_snapshot {
            cluster.save_snapshot();
        }
        cluster
            .metrics
            .connected
            .set(i64::from(!started_from_snapshot));
        Ok(cluster)
    }

    /// The namespace's seal check opens with our seal key; the first replica creates it.
    async fn check_seal(&self) -> Result<(), ClusterError> {
        let key = self.key(SEAL_CHECK);
        let mismatch = |source| ClusterError::SealMismatch {
            path: self.config.seal_key_file.display().to_string(),
            source,
        };
        let sealed = match self.mirror.get(&key) {
            Some(e) => e.value.to_vec(),
            None if self.is_connected() => {
                let sealed = self.config.seal.seal(&key, SEAL_CHECK_TEXT)?;
                match self.client.create(&key, sealed.clone(), 0).await? {
                    Txn::Committed(_) => sealed,
                    Txn::Conflict { current, .. } => current.map(|kv| kv.value).unwrap_or_default(),
                }
            }
            None => return Ok(()),
        };
        match self.config.seal.open(&key, &sealed) {
            Ok(text) if text.as_slice() == SEAL_CHECK_TEXT => Ok(()),
            Ok(_) => Err(mismatch(SealError::Open { key })),
            Err(e) => Err(mismatch(e)),
        }
    }

    /// `/scoregate/<namespace>/state/`: the shared state, watched and copied.
    pub fn state_prefix(&self) -> String {
        state_prefix(&self.config)
    }

    /// `/scoregate/<namespace>/replicas/`: lease-bound registrations of live replicas (not
    /// watched: they change as replicas apply changes, and must not trigger cycles themselves).
    pub fn replicas_prefix(&self) -> String {
        format!("{}replicas/", self.config.prefix())
    }

    /// The full etcd key of `relative` (e.g. `keys/model`) in the shared state.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.state_prefix())
    }

    /// A shared source's binding to `relative`.
    pub fn shared(self: &Arc<Self>, relative: &str) -> SharedKey {
        SharedKey {
            cluster: Arc::clone(self),
            key: self.key(relative),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.metrics.connected.set(i64::from(up));
    }

    /// The revision the published state reflects.
    pub fn applied_revision(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Records that a state built from the copy at `revision` (or later) is published.
    pub(crate) fn set_applied(&self, revision: i64) {
        self.applied.send_if_modified(|current| {
            if revision > *current {
                *current = revision;
                true
            } else {
                false
            }
        });
        self.metrics.applied_revision.set(self.applied_revision());
    }

    /// Waits until the published state reflects `revision`; false after `limit`.
    pub async fn wait_applied(&self, revision: i64, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Writes the sealed snapshot of the copy (failures are logged: the copy in memory stays).
    pub(crate) fn save_snapshot(&self) {
        if let Err(e) = self.mirror.save(&self.snapshot, &self.state_prefix()) {
            tracing::warn!(file = %self.snapshot.display(), error = %e, "cannot write the cluster snapshot");
        }
    }
}

fn state_prefix(config: &EtcdConfig) -> String {
    format!("{}state/", config.prefix())
}

/// A shared source's etcd key. Equal when the key is (the cluster is the process's one).
#[derive(Clone)]
pub struct SharedKey {
    pub cluster: Arc<Cluster>,
    pub key: String,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedKey({})", self.key)
    }
}

impl PartialEq for SharedKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for SharedKey {}

impl SharedKey {
    /// The version of the value in the copy.
    pub fn stamp(&self) -> Option<Fingerprint> {
        self.cluster.mirror.stamp(&self.key)
    }

    /// The version of every value under this key as a prefix.
    pub fn prefix_stamp(&self) -> Option<Fingerprint> {
        self.cluster.mirror.prefix_stamp(&self.key)
    }

    /// The opened value in the copy, as a file read would return it (`NotFound` when absent).
    pub fn read(&self) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let entry = self
            .cluster
            .mirror
            .get(&self.key)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        self.cluster
            .config
            .seal
            .open(&self.key, &entry.value)
            .map_err(std::io::Error::other)
    }

    /// Every plain value under this key as a prefix, in key order.
    pub fn read_prefix(&self) -> Vec<(String, Arc<Vec<u8>>)> {
        self.cluster
            .mirror
            .prefix(&self.key)
            .into_iter()
            .map(|(k, e)| (k, e.value))
            .collect()
    }

    /// The mod revision of the value in the copy (0: absent).
    pub fn mod_revision(&self) -> i64 {
        self.cluster
            .mirror
            .get(&self.key)
            .map_or(0, |e| e.mod_revision)
    }

    /// Seals `plain` and writes it if the value is still at `expected` (0: absent). Returns the
    /// commit revision.
    pub async fn put_if(&self, expected: i64, plain: &[u8]) -> Result<i64, ClusterError> {
        let sealed = self.cluster.config.seal.seal(&self.key, plain)?;
        let txn = if expected == 0 {
            self.cluster
                .client
                .create(&self.key, sealed.clone(), 0)
                .await?
        } else {
            self.cluster
                .client
                .compare_and_put(&self.key, expected, sealed.clone())
                .await?
        };
        match txn {
            Txn::Committed(revision) => {
                self.cluster.mirror.committed(&self.key, sealed, revision);
                // A restart while etcd is down must find what this replica created.
                self.cluster.save_snapshot();
                Ok(revision)
            }
            Txn::Conflict { .. } => Err(ClusterError::Conflict(self.key.clone())),
        }
    }

    /// [`Self::put_if`] from blocking code (the builder's first values, under the applier).
    pub fn put_if_blocking(&self, expected: i64, plain: &[u8]) -> Result<i64, ClusterError> {
        tokio::runtime::Handle::current().block_on(self.put_if(expected, plain))
    }
}

/// `GET /cluster`: what an operator needs to see whether a change has reached every replica.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<etcd::MemberStatus>,
    /// Live replicas (lease-bound registrations), by instance; `None` when etcd cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<sync::Registration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The view of `cluster` (`None`: the local backend).
pub async fn view(cluster: Option<&Arc<Cluster>>) -> View {
    let Some(c) = cluster else {
        return View {
            backend: "local",
            namespace: None,
            instance: None,
            connected: None,
            applied_revision: None,
            endpoints: Vec::new(),
            replicas: None,
            error: None,
        };
    };
    let (replicas, error) = match c.client.get_prefix(&c.replicas_prefix()).await {
        Ok((kvs, _)) => (
            Some(
                kvs.iter()
                    .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                    .collect(),
            ),
            None,
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    View {
        backend: "etcd",
        namespace: Some(c.config.namespace.clone()),
        instance: Some(c.config.instance.clone()),
        connected: Some(c.is_connected()),
        applied_revision: Some(c.applied_revision()),
        endpoints: c.client.status().await,
        replicas,
        error,
    }
}
