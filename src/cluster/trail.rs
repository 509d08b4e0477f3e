//! The fleet's audit trail: every successful management write (regenerateKeys,
//! rotateSigningKey, role-assignment add and delete) also appends its activity entry, with its
//! initiator and `RoleInstance`, under `/scoregate/<namespace>/activity/`, and
//! `GET /activity?scope=fleet` on any replica reads the newest entries of every replica.
//!
//! Retention is bounded by leases: entries are bound to a 30-day lease that a replica replaces
//! daily, so each entry lives 30 to 31 days. Appending is best effort: the write itself is
//! already committed, and an entry etcd does not take is logged (the local activity log and the
//! record stream keep it regardless).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;

/// How long an entry stays.
const RETENTION_S: i64 = 30 * 24 * 3600;
/// How long one lease is used for new entries.
const LEASE_REUSE: Duration = Duration::from_secs(24 * 3600);

/// `/scoregate/<namespace>/activity/`.
pub fn prefix(cluster: &Cluster) -> String {
    format!("{}activity/", cluster.config.prefix())
}

/// Appends every entry received until the sender is dropped.
pub async fn append<T: serde::Serialize>(
    cluster: Arc<Cluster>,
    mut entries: tokio::sync::mpsc::UnboundedReceiver<T>,
) {
    let mut lease: Option<(i64, Instant)> = None;
    let mut seq: u64 = 0;
    while let Some(entry) = entries.recv().await {
        seq += 1;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // Sortable by time across replicas; unique per replica.
        let key = format!(
            "{}{millis:015}-{}-{seq:06}",
            prefix(&cluster),
            cluster.config.instance
        );
        let result = async {
            let id = match lease {
                Some((id, since)) if since.elapsed() < LEASE_REUSE => id,
                _ => {
                    let id = cluster.client.grant(RETENTION_S).await?;
                    lease = Some((id, Instant::now()));
                    id
                }
            };
            let bytes = serde_json::to_vec(&entry).unwrap_or_default();
            cluster.client.put(&key, bytes, id).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "an activity entry did not reach the fleet's trail");
            lease = None;
        }
    }
}

/// The newest `limit` entries of the fleet, oldest first.
pub async fn recent(
    cluster: &Cluster,
    limit: usize,
) -> Result<Vec<serde_json::Value>, super::etcd::EtcdError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut kvs = cluster
        .client
        .get_prefix_last(&prefix(cluster), limit)
        .await?;
    kvs.reverse();
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}
