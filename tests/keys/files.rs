//! Operator key files changing under a running gateway: a Kubernetes Secret's `..data` symlink
//! swap, an editor's rename over the file, and files that are broken or gone.

use reqwest::StatusCode;
use serde_json::Value;

use super::support::MockUpstream;
use super::{
    key_file_text, operator_file_gateway, operator_key, reloads, rename_over, score, wait_reloads,
};

#[tokio::test]
async fn kubernetes_secret_symlink_swap_is_picked_up() {
    let upstream = MockUpstream::start().await;
    // A Secret volume as the kubelet lays it out: the visible file links through `..data`,
    // which links to a timestamped directory.
    let volume = tempfile::tempdir().expect("volume dir");
    let v = volume.path();
    let first = "..2024_05_01_10_00_00.000000001";
    std::fs::create_dir(v.join(first)).expect("create first data dir");
    let (a1, b1) = (operator_key("a1"), operator_key("b1"));
    std::fs::write(v.join(first).join("keys.json"), key_file_text(&a1, &b1))
        .expect("write first keys");
    std::os::unix::fs::symlink(first, v.join("..data")).expect("link ..data");
    std::os::unix::fs::symlink("..data/keys.json", v.join("keys.json")).expect("link keys.json");
    let gw = operator_file_gateway(&upstream, &v.join("keys.json")).await;
    assert_eq!(score(&gw, &a1).await, StatusCode::OK);

    // The update: a new timestamped directory, a new link renamed over `..data` (atomic), the
    // old directory removed. The visible path itself never changes. Same-length keys, so the
    // file size stays the same as well.
    let second = "..2024_05_01_10_05_00.000000002";
    std::fs::create_dir(v.join(second)).expect("create second data dir");
    let (a2, b2) = (operator_key("a2"), operator_key("b2"));
    std::fs::write(v.join(second).join("keys.json"), key_file_text(&a2, &b2))
        .expect("write second keys");
    std::os::unix::fs::symlink(second, v.join("..data_tmp")).expect("link ..data_tmp");
    std::fs::rename(v.join("..data_tmp"), v.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(v.join(first)).expect("remove the old data dir");

    wait_reloads(&gw, "success", 1).await;
    assert_eq!(score(&gw, &a1).await, StatusCode::UNAUTHORIZED);
    assert_eq!(score(&gw, &b1).await, StatusCode::UNAUTHORIZED);
    assert_eq!(score(&gw, &a2).await, StatusCode::OK);
    assert_eq!(score(&gw, &b2).await, StatusCode::OK);
    assert_eq!(gw.list_keys("iris").await, (a2, b2));
}

#[tokio::test]
async fn editor_rename_over_the_key_file_is_picked_up() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().expect("operator dir");
    let path = dir.path().join("keys.json");
    let (a, b1, b2) = (operator_key("a"), operator_key("b1"), operator_key("b2"));
    std::fs::write(&path, key_file_text(&a, &b1)).expect("write key file");
    let gw = operator_file_gateway(&upstream, &path).await;
    assert_eq!(score(&gw, &b1).await, StatusCode::OK);

    rename_over(&path, &key_file_text(&a, &b2));
    wait_reloads(&gw, "success", 1).await;
    assert_eq!(score(&gw, &b1).await, StatusCode::UNAUTHORIZED);
    assert_eq!(score(&gw, &b2).await, StatusCode::OK);
    assert_eq!(score(&gw, &a).await, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_key_file_keeps_the_old_keys_in_force() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().expect("operator dir");
    let path = dir.path().join("keys.json");
    let (a, b, c) = (operator_key("a"), operator_key("b"), operator_key("c"));
    std::fs::write(&path, key_file_text(&a, &b)).expect("write key file");
    let gw = operator_file_gateway(&upstream, &path).await;

    let bad = [
        ("truncated JSON", format!("{{\"primaryKey\": \"{c}\", ")),
        ("a key that is too short", key_file_text(&c, "short")),
        ("equal keys", key_file_text(&c, &c)),
    ];
    for (n, (what, text)) in bad.iter().enumerate() {
        rename_over(&path, text);
        wait_reloads(&gw, "error", n as u64 + 1).await;
        assert_eq!(score(&gw, &a).await, StatusCode::OK, "{what}: old primary");
        assert_eq!(
            score(&gw, &b).await,
            StatusCode::OK,
            "{what}: old secondary"
        );
        assert_eq!(score(&gw, &c).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    std::fs::remove_file(&path).expect("remove the key file");
    wait_reloads(&gw, "error", 4).await;
    assert_eq!(score(&gw, &a).await, StatusCode::OK, "file gone: old keys");

    // A good file afterwards applies as usual.
    rename_over(&path, &key_file_text(&a, &c));
    wait_reloads(&gw, "success", 1).await;
    assert_eq!(score(&gw, &b).await, StatusCode::UNAUTHORIZED);
    assert_eq!(score(&gw, &c).await, StatusCode::OK);
    assert_eq!(reloads(&gw, "error"), 4);

    // Each change from disk is in the activity log, attributed to the file watch.
    let reloads: Vec<Value> = gw
        .activity(100)
        .await
        .into_iter()
        .filter(|e| e["operationName"] == "reloadKeys")
        .collect();
    let results: Vec<&str> = reloads
        .iter()
        .map(|e| e["result"].as_str().expect("result"))
        .collect();
    assert_eq!(
        results,
        ["Failed", "Failed", "Failed", "Failed", "Succeeded"],
        "{reloads:#?}"
    );
    for e in &reloads {
        assert_eq!(e["initiator"], "file-watch", "{e}");
        assert_eq!(e["service"], "iris", "{e}");
    }
}
