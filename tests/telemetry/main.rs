//! Telemetry end to end: the request record (every field, exactly one per request) for a
//! success, each kind of failure and a client that leaves; query redaction; the metrics each
//! outcome moves; `/metrics` access; the activity log of management operations; a stalled or
//! unwritable record sink that never slows requests; file output with rotation; and a structural
//! check that no key, token or admin credential reaches records, diagnostics or metrics.
//!
//! One test binary (`cargo test --test telemetry`) in several files: `records` (each outcome's
//! record and metrics, redaction), `disconnects` (clients that leave, bodiless responses),
//! `admin` (`/metrics`, the activity log), `sink` (stalled, failing and rotating outputs),
//! `leaks` (the structural redaction check), `trace` (W3C trace context and role names). This file holds what they share.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

// The harness lives beside the suites, not under this directory.
#[path = "../support/mod.rs"]
mod support;

mod admin;
mod azure_monitor;
mod disconnects;
mod export;
mod leaks;
mod records;
mod sink;
mod trace;

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;
use support::check::send_json;
use support::process::free_port;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway};

const OPEN: &str = "/api/v1/service/open";
const DOWN: &str = "/api/v1/service/down";
const SLOW: &str = "/api/v1/service/slow";
const TOK: &str = "/api/v1/service/tok";
const IRIS_SCORE: &str = "/api/v1/service/iris/score";
const TOK_SCORE: &str = "/api/v1/service/tok/score";

/// Every field of a request record, and nothing else.
const FIELDS: [&str; 27] = [
    "type",
    "timestamp",
    "RequestId",
    "ClientRequestId",
    "HTTPMethod",
    "RequestUrl",
    "UserAgent",
    "StatusCode",
    "Success",
    "Duration",
    "ComputeType",
    "ServiceName",
    "AuthMode",
    "Principal",
    "UpstreamStatusCode",
    "UpstreamDuration",
    "QueueWait",
    "RequestBytes",
    "ResponseBytes",
    "ErrorCode",
    "ClientIp",
    "OperationId",
    "ParentId",
    "SpanId",
    "Name",
    "RoleName",
    "RoleInstance",
];

/// `iris` (key mode), `open` (no auth), `down` (nothing listens), `slow` (300 ms scoring timeout).
async fn telemetry_gateway(upstream: &MockUpstream) -> TestGateway {
    GatewayBuilder::new()
        .server("compute_type = \"K8s-test\"")
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .service("open", OPEN, &upstream.url())
        .service("down", DOWN, &format!("http://{}", free_port()))
        .service_with("slow", SLOW, &upstream.url(), "scoring_timeout_ms = 300")
        .start()
        .await
}

fn count(gw: &TestGateway, series: &str) -> u64 {
    gw.counter(series)
}

fn requests_series(service: &str, method: &str, class: &str) -> String {
    format!(
        r#"scoregate_requests_total{{method="{method}",service="{service}",status_class="{class}"}}"#
    )
}

/// `_count` of the upstream or queue wait histogram.
fn histogram_count(name: &str, service: &str) -> String {
    format!(r#"scoregate_{name}_seconds_count{{service="{service}"}}"#)
}

/// `_count` of the request duration histogram for one status class.
fn duration_count(service: &str, class: &str) -> String {
    format!(
        r#"scoregate_request_duration_seconds_count{{service="{service}",status_class="{class}"}}"#
    )
}

fn ms(record: &Value, field: &str) -> f64 {
    record[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is a number: {record}"))
}

/// Asserts the record has exactly the documented fields and the values every record shares.
fn assert_shape(record: &Value, id: &str) {
    let keys: BTreeSet<&str> = record
        .as_object()
        .unwrap_or_else(|| panic!("record is an object: {record}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, FIELDS.into_iter().collect(), "{record}");
    assert_eq!(record["type"], "request");
    assert_eq!(record["RequestId"], id);
    assert_eq!(record["ComputeType"], "K8s-test");
    assert_eq!(record["ClientIp"], "127.0.0.1");
    let ts = record["timestamp"].as_str().expect("timestamp is text");
    humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("timestamp {ts}: {e}"));
    assert!(ms(record, "Duration") >= 0.0, "{record}");
}

/// The request records (not activity entries) with this request id.
fn records_with_id(gw: &TestGateway, id: &str) -> usize {
    gw.records()
        .iter()
        .filter(|r| r["type"] == "request" && r["RequestId"] == id)
        .count()
}

/// Asserts request `id` has exactly one record: a later request's record is written after any
/// record of `id` could be, so once it is there the count is final.
async fn assert_single_record(gw: &TestGateway, id: &str) {
    let barrier = format!("barrier-after-{id}");
    let (status, _, _) = send_json(
        gw.client()
            .get(gw.url("/api/v1/service/open/echo"))
            .header("x-request-id", &barrier),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    gw.record_for(&barrier).await;
    assert_eq!(records_with_id(gw, id), 1, "records of {id}");
}
