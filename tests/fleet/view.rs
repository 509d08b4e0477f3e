//! `GET /cluster`: the backend, etcd endpoint health, this instance with its applied revision,
//! and the live replicas (lease-bound registrations) with theirs, so an operator sees when a
//! change has reached every replica.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::shared::replica;
use crate::support::admin_api::Admin;
use crate::support::etcd::Etcd;
use crate::support::{MockUpstream, iris_gateway, wait_until};

#[tokio::test]
async fn get_cluster_lists_live_replicas_and_the_revision_each_applied() {
    let etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let (a, mut b) = tokio::join!(
        replica(&etcd, "view", "pod-a", &url),
        replica(&etcd, "view", "pod-b", &url)
    );
    let (admin_a, admin_b) = (Admin::of(&a).await, Admin::of(&b).await);
    let (status, view) = admin_a.call(Method::GET, "/cluster", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["backend"], "etcd");
    assert_eq!(view["namespace"], "view");
    assert_eq!(view["instance"], "pod-a");
    assert_eq!(view["connected"], true);
    assert_eq!(view["endpoints"][0]["healthy"], true, "{view}");
    // Records carry the configured instance as RoleInstance.
    let (primary, _) = admin_a.keys("m").await;
    assert_eq!(
        super::shared::score(&a, "/m", &primary).await,
        StatusCode::OK
    );
    let records = a.wait_for_records(1).await;
    assert_eq!(records[0]["RoleInstance"], "pod-a", "{}", records[0]);

    // A rotation on B: its commit revision shows up as every replica's applied revision.
    let (status, body) = admin_b
        .call(
            Method::POST,
            "/services/m/regenerateKeys",
            Some(json!({"keyType": "Primary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, view_b) = admin_b.call(Method::GET, "/cluster", None).await;
    let rotated = view_b["appliedRevision"]
        .as_i64()
        .expect("applied revision");
    wait_until(
        "both replicas registered at the rotation's revision",
        || async {
            let (_, view) = admin_a.call(Method::GET, "/cluster", None).await;
            let replicas = view["replicas"].as_array().cloned().unwrap_or_default();
            let at = |name: &str| {
                replicas
                    .iter()
                    .find(|r| r["instance"] == name)
                    .and_then(|r| r["appliedRevision"].as_i64())
            };
            at("pod-a") >= Some(rotated) && at("pod-b") >= Some(rotated)
        },
    )
    .await;

    // A replica that stops takes its registration with it.
    b.shutdown().await;
    wait_until("pod-b's registration is gone", || async {
        let (_, view) = admin_a.call(Method::GET, "/cluster", None).await;
        view["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["instance"] != "pod-b"))
    })
    .await;
}

#[tokio::test]
async fn get_cluster_on_the_local_backend_says_so() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let admin = Admin::of(&gw).await;
    let (status, view) = admin.call(Method::GET, "/cluster", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view, json!({"backend": "local"}));
}
