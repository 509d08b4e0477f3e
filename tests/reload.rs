//! Live reconfiguration end to end: `POST /reload`, SIGHUP on the real binary and edits of the
//! config file picked up by the 500 ms watcher; rejected reloads keep the running configuration;
//! requests in flight finish under the settings they started with; certificate files replaced
//! in place, as a bad pair, or by a Kubernetes Secret symlink swap; and both kinds of reload under
//! load without a single failed request. Split by topic into `reload/*.rs`.
//!
//! Every config edit is written atomically (a temporary file renamed over the original), so the
//! watcher never reads half a file; where a test counts reloads it first waits for the watcher
//! to have seen the edit, so the count does not depend on who got there first.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

mod reload {
    pub mod certs;
    pub mod config;
    pub mod inflight;
    pub mod load;
    pub mod races;
}

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use support::{GatewayBuilder, TestGateway, wait_until, within, within_for};

const RELOADS_OK: &str = r#"scoregate_config_reloads_total{result="success"}"#;
const RELOADS_FAILED: &str = r#"scoregate_config_reloads_total{result="error"}"#;
const CERTS_OK: &str = r#"scoregate_certificate_reloads_total{result="success"}"#;
const CERTS_FAILED: &str = r#"scoregate_certificate_reloads_total{result="error"}"#;

/// The value of a counter, 0 before its first increment (labelled series appear only then).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // counters: small whole numbers
fn count(gw: &TestGateway, series: &str) -> u64 {
    gw.metric(series).map_or(0, |v| v as u64)
}

/// Replaces the running gateway's config file with `builder`'s text (same state directory and
/// certificate paths), atomically.
fn rewrite(gw: &TestGateway, builder: &GatewayBuilder) {
    support::certs::write_atomic(
        &gw.dir().join("scoregate.toml"),
        &builder.toml(gw.pki(), gw.dir()),
    );
}

/// [`wait_until`] with a tighter bound than the harness deadline, for behaviour that has a
/// documented latency.
async fn wait_until_within<F, Fut>(limit: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within_for(limit, what, wait_until(what, condition)).await;
}

/// `GET url`, body read; the status.
async fn status(client: &reqwest::Client, url: String) -> StatusCode {
    let resp = within(&format!("GET {url}"), client.get(&url).send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    within("response body", resp.bytes())
        .await
        .expect("response body");
    status
}

/// `GET path` on the gateway's scoring listener; the status.
async fn get(gw: &TestGateway, path: &str) -> StatusCode {
    status(gw.client(), gw.url(path)).await
}
