//! `scoregate cluster import` and `scoregate cluster status`, the real binary against a real
//! etcd: a single gateway's state directory moves into an empty namespace (and a replica then
//! serves the same keys and assignments); a namespace that holds anything is refused.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::shared::score;
use crate::support::admin_api::Admin;
use crate::support::etcd::Etcd;
use crate::support::process::run;
use crate::support::{DEADLINE, GatewayBuilder, MockUpstream};

#[tokio::test]
async fn import_moves_a_local_state_dir_into_an_empty_namespace_once() {
    let etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let local_state = tempfile::tempdir().expect("state");
    let builder = || {
        GatewayBuilder::new()
            .service_with("m", "/m", &upstream.url(), "auth = \"key\"")
            .service_with("tok", "/tok", &upstream.url(), "auth = \"token\"")
    };
    // A single gateway on the local backend, with an API role assignment.
    let mut local = builder().state_dir(local_state.path()).start().await;
    let admin = Admin::new(local.admin_addr, local_state.path()).await;
    let keys = admin.keys("m").await;
    let token = admin.token("tok").await;
    let (status, body) = admin
        .call(
            Method::POST,
            "/role-assignments",
            Some(json!({"principal": "ops", "role": "Reader"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    local.shutdown().await;

    // Its config, plus a [cluster] table: import, then a second import is refused.
    let dir = tempfile::tempdir().expect("config dir");
    let (_pki, path) = builder()
        .state_dir(local_state.path())
        .table(&etcd.cluster_toml("imported", "cli"))
        .write(dir.path());
    let path = path.display().to_string();
    let out = run(&["cluster", "import", "--config", &path], DEADLINE).await;
    assert!(out.status.success(), "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    for what in ["keys/m", "signing/tok", "admin", "1 role assignment(s)"] {
        assert!(
            report["imported"]
                .as_array()
                .expect("imported")
                .iter()
                .any(|v| v == what),
            "{what} in {report}"
        );
    }
    let again = run(&["cluster", "import", "--config", &path], DEADLINE).await;
    assert!(!again.status.success());
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);

    // A fleet replica with a fresh state_dir serves the imported keys, tokens and assignment.
    let replica = builder()
        .table(&etcd.cluster_toml("imported", "pod-a"))
        .start()
        .await;
    let fleet_admin = Admin::of(&replica).await;
    assert_eq!(fleet_admin.keys("m").await, keys);
    assert_eq!(score(&replica, "/tok", &token).await, StatusCode::OK);
    let (_, list) = fleet_admin
        .call(Method::GET, "/role-assignments", None)
        .await;
    assert!(
        list.as_array()
            .expect("list")
            .iter()
            .any(|a| a["principal"] == "ops"),
        "{list}"
    );

    let out = run(&["cluster", "status", "--config", &path], DEADLINE).await;
    assert!(out.status.success(), "{}", out.stderr);
    let status: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(status["namespace"], "imported");
    assert_eq!(status["endpoints"][0]["healthy"], true, "{status}");
    assert!(status["revision"].as_i64().unwrap_or(0) > 0, "{status}");
}
