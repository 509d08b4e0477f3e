//! When etcd fails, scoring does not: a replica keeps serving from the state it last applied,
//! stays ready, refuses management writes with `cluster_unavailable` (changing nothing), answers
//! reads from the applied state, and catches up when etcd is back: from the revision it last
//! copied, or with a full read when that revision was compacted. A replica that synced before
//! restarts from its sealed snapshot while etcd is down.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::shared::{score, wait_score};
use crate::support::admin_api::Admin;
use crate::support::etcd::Etcd;
use crate::support::{GatewayBuilder, MockUpstream, TestGateway, wait_until};

async fn replica(etcd_toml: String, upstream: &str) -> TestGateway {
    GatewayBuilder::new()
        .service_with("m", "/m", upstream, "auth = \"key\"")
        .service_with("tok", "/tok", upstream, "auth = \"token\"")
        .table(&etcd_toml)
        .start()
        .await
}

async fn wait_connected(gw: &TestGateway, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    wait_until(&format!("scoregate_cluster_connected = {want}"), || async {
        gw.metric("scoregate_cluster_connected") == Some(want)
    })
    .await;
}

async fn regenerate(admin: &Admin, slot: &str) -> (StatusCode, serde_json::Value) {
    admin
        .call(
            Method::POST,
            "/services/m/regenerateKeys",
            Some(json!({ "keyType": slot })),
        )
        .await
}

#[tokio::test]
async fn etcd_down_scoring_continues_writes_are_refused_and_writes_resume_when_it_is_back() {
    let mut etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let a = replica(etcd.cluster_toml("down", "a"), &upstream.url()).await;
    let b = replica(etcd.cluster_toml("down", "b"), &upstream.url()).await;
    let (admin_a, admin_b) = (Admin::of(&a).await, Admin::of(&b).await);
    wait_connected(&a, true).await;
    let keys = admin_a.keys("m").await;
    let token = admin_b.token("tok").await;

    etcd.members[0].kill().await;
    wait_connected(&a, false).await;
    wait_connected(&b, false).await;
    for gw in [&a, &b] {
        assert_eq!(score(gw, "/m", &keys.0).await, StatusCode::OK);
        assert_eq!(score(gw, "/tok", &token).await, StatusCode::OK);
        let (status, body) = gw.admin_get("/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Writes change nothing and say why.
    let (status, body) = regenerate(&admin_a, "Secondary").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    let (status, body) = admin_b
        .call(Method::POST, "/services/tok/rotateSigningKey", None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    let (status, body) = admin_a
        .call(
            Method::POST,
            "/role-assignments",
            Some(json!({"principal": "p", "role": "Reader"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    assert_eq!(
        admin_a.keys("m").await,
        keys,
        "reads answer from the applied state"
    );
    assert_eq!(score(&a, "/m", &keys.1).await, StatusCode::OK);
    // Issuing a token is not a write: it signs with the applied key.
    let fresh = admin_a.token("tok").await;
    assert_eq!(score(&b, "/tok", &fresh).await, StatusCode::OK);
    assert!(
        a.counter("scoregate_cluster_writes_total{op=\"regenerateKeys\",result=\"unavailable\"}")
            >= 1
    );

    etcd.members[0].restart();
    etcd.wait_healthy().await;
    wait_connected(&a, true).await;
    wait_connected(&b, true).await;
    let (status, body) = regenerate(&admin_a, "Secondary").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_secondary = body["secondaryKey"]
        .as_str()
        .expect("secondaryKey")
        .to_owned();
    wait_score(&b, "/m", &new_secondary, StatusCode::OK).await;
    wait_score(&b, "/m", &keys.1, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        a.counter("scoregate_cluster_writes_total{op=\"regenerateKeys\",result=\"committed\"}"),
        1
    );
}

/// Replica A talks to members 0 and 1, replica B to member 2 only; member 2 is stopped, a key is
/// regenerated on A, optionally the history is compacted, member 2 comes back.
async fn cut_off_replica_catches_up(compact: bool) {
    let mut etcd = Etcd::cluster().await;
    let upstream = MockUpstream::start().await;
    let ns = if compact { "cutc" } else { "cut" };
    let a = replica(etcd.cluster_toml_for(ns, "a", &[0, 1]), &upstream.url()).await;
    let b = replica(etcd.cluster_toml_for(ns, "b", &[2]), &upstream.url()).await;
    let admin_a = Admin::of(&a).await;
    let keys = admin_a.keys("m").await;
    wait_connected(&b, true).await;
    assert_eq!(score(&b, "/m", &keys.1).await, StatusCode::OK);

    etcd.members[2].kill().await;
    wait_connected(&b, false).await;
    let (status, body) = regenerate(&admin_a, "Secondary").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_secondary = body["secondaryKey"]
        .as_str()
        .expect("secondaryKey")
        .to_owned();
    // B is cut off: it still has the old key.
    assert_eq!(score(&b, "/m", &keys.1).await, StatusCode::OK);
    if compact {
        let (status, _) = regenerate(&admin_a, "Primary").await;
        assert_eq!(status, StatusCode::OK);
        let config = scoregate::config::parse_and_validate(
            &format!(
                "{}\n[[service]]\nname = \"x\"\nroute = \"/\"\nupstream = \"http://127.0.0.1:1\"\n",
                etcd.cluster_toml_for(ns, "tool", &[0, 1])
            ),
            &etcd.dir().join("tool.toml"),
        )
        .expect("tool config");
        let client =
            scoregate::cluster::etcd::Client::new(config.cluster.etcd().expect("etcd backend"))
                .expect("client");
        let (_, now) = client.get_prefix("/").await.expect("get");
        client.compact(now).await.expect("compact");
    }

    etcd.members[2].restart();
    wait_connected(&b, true).await;
    wait_score(&b, "/m", &new_secondary, StatusCode::OK).await;
    wait_score(&b, "/m", &keys.1, StatusCode::UNAUTHORIZED).await;
    let applied = |gw: &TestGateway| gw.metric("scoregate_cluster_applied_revision");
    wait_until("B applied what A applied", || async {
        applied(&b).is_some() && applied(&b) >= applied(&a)
    })
    .await;
}

#[tokio::test]
async fn a_change_made_while_a_replica_is_cut_off_reaches_it_when_it_reconnects() {
    cut_off_replica_catches_up(false).await;
}

#[tokio::test]
async fn a_replica_whose_revision_was_compacted_away_reads_everything_again() {
    cut_off_replica_catches_up(true).await;
}

#[tokio::test]
async fn a_synced_replica_restarts_from_its_sealed_snapshot_while_etcd_is_down() {
    let mut etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let table = etcd.cluster_toml("snap", "a");
    let start = || {
        GatewayBuilder::new()
            .service_with("m", "/m", &upstream.url(), "auth = \"key\"")
            .table(&table)
            .state_dir(state.path())
            .start()
    };
    let mut first = start().await;
    let admin = Admin::new(first.admin_addr, state.path()).await;
    let keys = admin.keys("m").await;
    first.shutdown().await;
    drop(first);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let snapshot = state.path().join("cluster-snapshot.json");
        let mode = std::fs::metadata(&snapshot)
            .expect("snapshot written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&snapshot).expect("snapshot");
        assert!(!text.contains(&keys.0), "the snapshot is sealed");
    }

    etcd.members[0].kill().await;
    let second = start().await;
    second.wait_ready().await;
    assert_eq!(score(&second, "/m", &keys.0).await, StatusCode::OK);
    assert_eq!(second.metric("scoregate_cluster_connected"), Some(0.0));
    let admin = Admin::new(second.admin_addr, state.path()).await;
    let (status, body) = regenerate(&admin, "Primary").await;
    assert_eq!(
        body["error"]["code"], "cluster_unavailable",
        "{status} {body}"
    );

    etcd.members[0].restart();
    wait_connected(&second, true).await;
    let (status, body) = regenerate(&admin, "Primary").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_replica_that_never_synced_is_not_ready_and_invents_nothing_until_etcd_answers() {
    let mut etcd = Etcd::start().await;
    etcd.members[0].kill().await;
    let upstream = MockUpstream::start().await;
    let gw = replica(etcd.cluster_toml("never", "a"), &upstream.url()).await;
    wait_until("/readyz answers", || async {
        gw.admin_client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    let reason = body["reason"].as_str().expect("reason");
    assert!(reason.contains("never synced"), "{reason}");
    let (status, _) = gw.admin_get("/livez").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = gw.admin_get("/services").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "cluster_unavailable");
    let state = gw.dir().join("state");
    assert!(
        !state.join("admin.token").exists(),
        "no credential invented"
    );
    assert!(!state.join("cluster-snapshot.json").exists());

    etcd.members[0].restart();
    gw.wait_ready().await;
    let admin = Admin::of(&gw).await;
    let (primary, _) = admin.keys("m").await;
    assert_eq!(score(&gw, "/m", &primary).await, StatusCode::OK);
}

#[tokio::test]
async fn killing_the_etcd_leader_under_load_fails_no_scoring_request_and_writes_resume() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let mut etcd = Etcd::cluster().await;
    let upstream = MockUpstream::start().await;
    let a = Arc::new(replica(etcd.cluster_toml("leader", "a"), &upstream.url()).await);
    let b = Arc::new(replica(etcd.cluster_toml("leader", "b"), &upstream.url()).await);
    let admin_a = Admin::of(&a).await;
    let keys = admin_a.keys("m").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for gw in [&a, &b, &a, &b] {
        let (gw, stop, ok, failed, key) = (
            Arc::clone(gw),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            keys.0.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if score(&gw, "/m", &key).await == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    wait_until("load is flowing", || async {
        ok.load(Ordering::Relaxed) >= 20
    })
    .await;

    // Find and kill the leader.
    let config = scoregate::config::parse_and_validate(
        &format!(
            "{}\n[[service]]\nname = \"x\"\nroute = \"/\"\nupstream = \"http://127.0.0.1:1\"\n",
            etcd.cluster_toml("leader", "tool")
        ),
        &etcd.dir().join("tool.toml"),
    )
    .expect("tool config");
    let client = scoregate::cluster::etcd::Client::new(config.cluster.etcd().expect("etcd"))
        .expect("client");
    let statuses = client.status().await;
    let leader = statuses
        .iter()
        .position(|s| s.leader == Some(true))
        .unwrap_or_else(|| panic!("a leader among {statuses:?}"));
    let before = ok.load(Ordering::Relaxed);
    etcd.members[leader].kill().await;
    etcd.wait_healthy().await; // the two others elected a new leader
    wait_until("load kept flowing after the kill", || async {
        ok.load(Ordering::Relaxed) >= before + 20
    })
    .await;

    // Writes resume: once the remaining members have a leader, a write commits and reaches
    // the other replica.
    let (status, body) = regenerate(&admin_a, "Secondary").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_secondary = body["secondaryKey"]
        .as_str()
        .expect("secondaryKey")
        .to_owned();
    wait_score(&b, "/m", &new_secondary, StatusCode::OK).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed scoring requests");
    assert!(ok.load(Ordering::Relaxed) >= before + 20);
}
