//! The etcd client (`cluster::etcd`) against a real etcd: reads with their revision,
//! conditional writes, watches from a revision (and compaction), leases, and what "etcd is
//! unavailable" looks like.

use scoregate::cluster::etcd::{Change, Client, Txn, WatchEvent};
use scoregate::config::ClusterConfig;

use crate::support::etcd::Etcd;
use crate::support::within;

/// A client of `etcd` built the way the gateway builds it: from a validated `[cluster]` table.
fn client(etcd: &Etcd) -> Client {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let text = format!(
        "{}\n[[service]]\nname = \"m\"\nroute = \"/\"\nupstream = \"http://127.0.0.1:5001\"\n",
        etcd.cluster_toml("t", "a")
    );
    std::fs::write(&path, text).expect("write config");
    let config = scoregate::config::load_and_validate(&path).expect("valid config");
    let ClusterConfig::Etcd(etcd_config) = config.cluster else {
        panic!("backend is etcd");
    };
    Client::new(&etcd_config).expect("client")
}

#[tokio::test]
async fn conditional_writes_and_a_watch_from_a_revision() {
    let etcd = Etcd::start().await;
    let c = client(&etcd);

    // Create-if-absent: the first wins, the second sees the winner's value.
    let Txn::Committed(r1) = within("create", c.create("/p/a", b"one".to_vec(), 0))
        .await
        .expect("create")
    else {
        panic!("the first create commits");
    };
    match c.create("/p/a", b"two".to_vec(), 0).await.expect("create") {
        Txn::Conflict {
            current: Some(kv), ..
        } => assert_eq!(kv.value, b"one"),
        other => panic!("the second create must conflict: {other:?}"),
    }

    // Compare-and-put on the mod revision: a stale revision conflicts and changes nothing.
    let Txn::Committed(r2) = c
        .compare_and_put("/p/a", r1, b"three".to_vec())
        .await
        .expect("cas")
    else {
        panic!("cas at the current revision commits");
    };
    assert!(r2 > r1);
    assert!(matches!(
        c.compare_and_put("/p/a", r1, b"four".to_vec())
            .await
            .expect("cas"),
        Txn::Conflict { .. }
    ));
    let (kvs, revision) = c.get_prefix("/p/").await.expect("get prefix");
    assert_eq!(revision, r2);
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, b"three");
    assert_eq!(kvs[0].mod_revision, r2);

    // A watch from the revision after r1 replays r2 first, then sees new changes.
    let mut watch = c.watch("/p/", r1 + 1).await.expect("watch");
    let WatchEvent::Changes { events, .. } = within("replayed change", watch.next())
        .await
        .expect("watch event")
    else {
        panic!("changes expected");
    };
    assert!(matches!(&events[..], [Change::Put(kv)] if kv.value == b"three"));
    c.put("/p/b", b"x".to_vec(), 0).await.expect("put");
    let WatchEvent::Changes { events, revision } = within("new change", watch.next())
        .await
        .expect("watch event")
    else {
        panic!("changes expected");
    };
    assert!(
        matches!(&events[..], [Change::Put(kv)] if kv.key == b"/p/b" && kv.mod_revision == revision)
    );
    let Txn::Committed(_) = c
        .compare_and_delete("/p/b", revision)
        .await
        .expect("delete")
    else {
        panic!("delete at the current revision commits");
    };
    let WatchEvent::Changes { events, .. } =
        within("delete", watch.next()).await.expect("watch event")
    else {
        panic!("changes expected");
    };
    assert!(matches!(&events[..], [Change::Delete { key, .. }] if key == b"/p/b"));

    // After a compaction, a watch from before it is told so.
    let (_, now) = c.get_prefix("/p/").await.expect("get");
    c.compact(now).await.expect("compact");
    let mut stale = c.watch("/p/", r1).await.expect("watch");
    assert!(matches!(
        within("compaction", stale.next()).await.expect("watch event"),
        WatchEvent::Compacted(r) if r >= now
    ));
}

#[tokio::test]
async fn leases_and_an_unreachable_etcd() {
    let mut etcd = Etcd::start().await;
    let c = client(&etcd);
    let lease = c.grant(10).await.expect("grant");
    c.put("/p/reg", b"me".to_vec(), lease).await.expect("put");
    assert!(c.keep_alive_once(lease).await.expect("keep alive"));
    c.revoke(lease).await.expect("revoke");
    let (kvs, _) = c.get_prefix("/p/").await.expect("get");
    assert!(kvs.is_empty(), "a revoked lease takes its keys");
    let status = c.status().await;
    assert!(status[0].healthy, "{status:?}");

    etcd.members[0].kill().await;
    // Bounded by dial_timeout_ms = 1000 in the test table; the deadline here is generous.
    let e = within("a call to a dead etcd fails", c.get_prefix("/p/"))
        .await
        .expect_err("etcd is down");
    assert!(e.is_unavailable(), "{e}");
    let e = within("a write to a dead etcd fails", c.create("/p/x", vec![], 0))
        .await
        .expect_err("etcd is down");
    assert!(e.is_unavailable(), "{e}");
    assert!(!c.status().await[0].healthy);
}

#[tokio::test]
async fn a_replica_with_another_seal_key_refuses_to_start_and_overwrites_nothing() {
    use scoregate::cluster::{Cluster, ClusterError, ClusterMetrics};
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |seal: &std::path::Path, name: &str| {
        let text = etcd.cluster_toml("seal", name).replace(
            &etcd.seal_key.display().to_string(),
            &seal.display().to_string(),
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!("{text}\n[[service]]\nname = \"m\"\nroute = \"/\"\nupstream = \"http://127.0.0.1:1\"\n"),
        )
        .expect("write");
        let config = scoregate::config::load_and_validate(&path).expect("config");
        let etcd_config = std::sync::Arc::clone(config.cluster.etcd().expect("etcd"));
        let metrics = scoregate::telemetry::metrics::Metrics::new();
        let state = dir.path().join(format!("{name}-state"));
        async move {
            Cluster::open(
                etcd_config,
                &state,
                &ClusterMetrics::register(metrics.registry()),
            )
            .await
        }
    };
    let first = within("first replica", open(&etcd.seal_key, "a"))
        .await
        .expect("the first replica creates the seal check");
    let c = client(&etcd);
    let (before, _) = c.get_prefix("/scoregate/seal/").await.expect("get");
    assert_eq!(before.len(), 1, "the seal check is stored");
    drop(first);

    let other = dir.path().join("other.key");
    std::fs::write(&other, scoregate::seal::SealKey::generate().expect("key")).expect("write");
    let e = within("second replica", open(&other, "b"))
        .await
        .expect_err("another seal key is refused");
    assert!(matches!(e, ClusterError::SealMismatch { .. }), "{e}");
    assert!(e.to_string().contains("other.key"), "{e}");
    let (after, _) = c.get_prefix("/scoregate/seal/").await.expect("get");
    assert_eq!(
        before
            .iter()
            .map(|kv| (&kv.key, kv.mod_revision))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|kv| (&kv.key, kv.mod_revision))
            .collect::<Vec<_>>(),
        "nothing overwritten"
    );
}
