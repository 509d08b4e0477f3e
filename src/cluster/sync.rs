//! The sync loop: keeps the replica's copy of its namespace current from etcd's watch and runs a
//! reload cycle after every change, so the change is built and published like any other source's.
//!
//! It resumes a broken watch from the revision after the last one copied (so nothing is missed
//! while etcd or the network was down); if etcd has compacted that revision away, it reads the
//! whole namespace again. While etcd cannot be reached it retries with a bounded backoff and the
//! replica keeps serving from the state it last applied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use super::etcd::WatchEvent;

/// Longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs until `stop` is cancelled. `apply` runs one reload cycle (the applier's, with
/// `Trigger::Cluster`; passed in so this module does not depend on `reload`).
pub async fn run<F, Fut>(cluster: Arc<Cluster>, apply: F, stop: tokio_util::sync::CancellationToken)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let outcome = follow(&cluster, &apply).await;
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "etcd watch lost; serving the last applied state");
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = session => {}
        }
        cluster.set_connected(false);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One session: (re)connect, catch up, and follow the watch until it fails.
async fn follow<F, Fut>(cluster: &Cluster, apply: &F) -> Result<(), super::ClusterError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let prefix = cluster.state_prefix();
    cluster.client.authenticate().await?;
    let mut watch = cluster
        .client
        .watch(&prefix, cluster.mirror.revision() + 1)
        .await?;
    cluster.set_connected(true);
    // The copy may be ahead of the published state (a snapshot start, a change that arrived
    // just before a failure): apply it now.
    apply().await;
    loop {
        match watch.next().await? {
            WatchEvent::Changes { revision, events } => {
                let received = Instant::now();
                let newest = events
                    .iter()
                    .map(|c| match c {
                        super::etcd::Change::Put(kv) => kv.mod_revision,
                        super::etcd::Change::Delete { mod_revision, .. } => *mod_revision,
                    })
                    .max();
                let has_events = newest.is_some();
                // A progress notification (no events) moves the copy to the store's revision.
                cluster.mirror.apply(events, newest.unwrap_or(revision));
                cluster.save_snapshot();
                apply().await;
                if has_events {
                    cluster
                        .metrics
                        .apply_seconds
                        .observe(received.elapsed().as_secs_f64());
                }
            }
            WatchEvent::Compacted(revision) => {
                tracing::warn!(
                    revision,
                    "the etcd revision to resume from was compacted; reading the namespace again"
                );
                let (kvs, revision) = cluster.client.get_prefix(&prefix).await?;
                cluster.mirror.replace(kvs, revision);
                cluster.save_snapshot();
                apply().await;
                watch = cluster.client.watch(&prefix, revision + 1).await?;
            }
        }
    }
}

/// How long a registration outlives its replica.
const LEASE_TTL_S: i64 = 10;
/// How often the lease is refreshed and the registration updated.
const REFRESH: Duration = Duration::from_secs(3);

/// What a replica publishes about itself under `replicas/<instance>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub instance: String,
    pub applied_revision: i64,
    pub version: String,
    /// Unix seconds.
    pub started_at: u64,
}

/// Keeps this replica's lease-bound registration current until `stop`, then revokes it.
pub async fn register(cluster: Arc<Cluster>, stop: tokio_util::sync::CancellationToken) {
    let key = format!("{}{}", cluster.replicas_prefix(), cluster.config.instance);
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut lease = 0;
    let mut published: Option<i64> = None;
    loop {
        let step = async {
            if lease == 0 {
                lease = cluster.client.grant(LEASE_TTL_S).await?;
                published = None;
            } else if !cluster.client.keep_alive_once(lease).await? {
                lease = 0;
                return Ok::<_, super::etcd::EtcdError>(());
            }
            let applied = cluster.applied_revision();
            if published != Some(applied) {
                let value = Registration {
                    instance: cluster.config.instance.clone(),
                    applied_revision: applied,
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    started_at,
                };
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                cluster.client.put(&key, bytes, lease).await?;
                published = Some(applied);
            }
            Ok(())
        };
        if let Err(e) = step.await {
            tracing::debug!(error = %e, "replica registration not refreshed");
            if !e.is_unavailable() {
                lease = 0;
            }
        }
        // Registrations follow applied changes quickly, and the lease well within its TTL.
        let mut applied = cluster.applied.subscribe();
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(REFRESH) => {}
            _ = applied.changed() => {}
        }
    }
    if lease != 0 {
        let _ = cluster.client.revoke(lease).await;
    }
}
