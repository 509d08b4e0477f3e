//! Key authentication end to end: both key slots accepted (and told apart in records and
//! metrics), every kind of refused credential, the credential never forwarded, rotation through
//! the management API and through the offline CLI against a running gateway, operator key files
//! (read-only, Kubernetes `..data` symlink swaps, editor renames, corrupt files), hashed storage,
//! file modes, last-used times, and a rotation under concurrent load that must not fail a single
//! request made with a current key.
//!
//! One test binary (`cargo test --test keys`) in several files: `auth` (accepted and refused
//! credentials), `management` (the API), `cli` (the offline CLI on a running gateway), `files`
//! (key files changing on disk), `load` (rotation under load). This file holds what they share.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

// The harness lives beside the suites, not under this directory.
#[path = "../support/mod.rs"]
mod support;

mod auth;
mod cli;
mod files;
mod load;
mod management;

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::json;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};

const OTHER: &str = "/api/v1/service/other";
const OPEN: &str = "/api/v1/service/open";
const SCORE: &str = "/api/v1/service/iris/score";

/// `iris` and `other` in key mode with generated keys, `open` without authentication.
async fn key_gateway(upstream: &MockUpstream) -> TestGateway {
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .service_with("other", OTHER, &upstream.url(), "auth = \"key\"")
        .service("open", OPEN, &upstream.url())
        .start()
        .await;
    gw.wait_ready().await;
    gw
}

/// `iris` in key mode with the operator's read-only `keys_file`.
async fn operator_file_gateway(upstream: &MockUpstream, keys_file: &Path) -> TestGateway {
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            &format!("auth = \"key\"\nkeys_file = \"{}\"", keys_file.display()),
        )
        .start()
        .await;
    // The keys are read at startup; files change only after that.
    gw.wait_ready().await;
    gw
}

/// POSTs to `iris` with `Authorization: Bearer <key>` and returns the status.
async fn score_with(client: &reqwest::Client, gw: &TestGateway, key: &str) -> StatusCode {
    let resp = within(
        "scoring request",
        client
            .post(gw.url(SCORE))
            .bearer_auth(key)
            .body("{}")
            .send(),
    )
    .await
    .expect("gateway answered");
    let status = resp.status();
    within("scoring response body", resp.bytes())
        .await
        .expect("response body");
    status
}

async fn score(gw: &TestGateway, key: &str) -> StatusCode {
    score_with(gw.client(), gw, key).await
}

/// A key file as an operator writes it.
fn key_file_text(primary: &str, secondary: &str) -> String {
    json!({ "primaryKey": primary, "secondaryKey": secondary }).to_string()
}

/// A distinct, valid operator key (40 characters).
fn operator_key(tag: &str) -> String {
    format!("{tag:-<8}-operator-chosen-key-0123456789")
}

/// Replaces `path` the way editors and config tools do: write a sibling, rename it over.
fn rename_over(path: &Path, contents: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, contents).expect("write the replacement file");
    std::fs::rename(&tmp, path).expect("rename the replacement over the key file");
}

fn state_key_file(gw: &TestGateway, service: &str) -> PathBuf {
    gw.dir()
        .join("state")
        .join("keys")
        .join(format!("{service}.json"))
}

fn reloads(gw: &TestGateway, result: &str) -> u64 {
    gw.counter(&format!(
        r#"scoregate_key_reloads_total{{result="{result}",service="iris"}}"#
    ))
}

async fn wait_reloads(gw: &TestGateway, result: &str, n: u64) {
    wait_until(
        &format!("{n} key reload(s) with result {result}"),
        || async { reloads(gw, result) >= n },
    )
    .await;
    assert_eq!(reloads(gw, result), n, "exactly {n} {result} reload(s)");
}
