//! The per-service wait queue (Azure ML's AKS front end): one request in the upstream at a time,
//! the rest admitted in arrival order, refused with 503 and `Retry-After` after
//! `max_request_wait_ms` or beyond `max_queue_length`, and a waiter whose client leaves gives up
//! its place. A request is known to be queued when `GET /services` counts it as `waiting`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::admin_api::Admin;
use crate::support::check::{assert_error_body, header, send_json};
use crate::support::pki::MODERN;
use crate::support::upstream::Seen;
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway};
use crate::{answer, spawn_get};

/// A gateway whose `iris` service admits one request at a time.
async fn one_at_a_time(upstream: &MockUpstream, extra: &str) -> TestGateway {
    GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            &format!("max_concurrent_requests = 1\n{extra}"),
        )
        .start()
        .await
}

fn url(gw: &TestGateway, rest: &str) -> String {
    gw.url(&format!("{IRIS}{rest}"))
}

fn ms(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("a number of milliseconds, got {v}"))
}

#[tokio::test]
async fn waiting_requests_reach_the_upstream_in_arrival_order() {
    let upstream = MockUpstream::start().await;
    let gw = one_at_a_time(
        &upstream,
        "max_request_wait_ms = 10000\nmax_queue_length = 10",
    )
    .await;
    let admin = Admin::of(&gw).await;

    let first = spawn_get(gw.client(), url(&gw, "/gate"));
    upstream.wait_gate_arrivals(1).await;
    let mut queued = Vec::new();
    for k in 1..=5u64 {
        queued.push(spawn_get(gw.client(), url(&gw, &format!("/echo?seq={k}"))));
        // Each is in the queue before the next is sent, so arrival order is known.
        admin.wait_waiting("iris", k).await;
    }
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the held request is in the upstream"
    );

    upstream.open_gate();
    assert_eq!(answer("held request", first).await.0, StatusCode::OK);
    for (k, task) in queued.into_iter().enumerate() {
        let (status, headers, _) = answer(&format!("queued request {}", k + 1), task).await;
        assert_eq!(status, StatusCode::OK);
        let record = gw.record_for(header(&headers, "x-request-id")).await;
        assert!(ms(&record["QueueWait"]) > 0.0, "it waited: {record}");
    }
    let order: Vec<String> = upstream
        .requests()
        .iter()
        .map(Seen::path_and_query)
        .collect();
    assert_eq!(
        order,
        [
            "/gate",
            "/echo?seq=1",
            "/echo?seq=2",
            "/echo?seq=3",
            "/echo?seq=4",
            "/echo?seq=5"
        ],
        "FIFO admission"
    );
    assert_eq!(admin.service("iris").await["waiting"], 0);
}

#[tokio::test]
async fn a_request_waiting_longer_than_max_request_wait_gets_503() {
    let upstream = MockUpstream::start().await;
    let gw = one_at_a_time(&upstream, "max_request_wait_ms = 300").await;
    let admin = Admin::of(&gw).await;
    let held = spawn_get(gw.client(), url(&gw, "/gate"));
    upstream.wait_gate_arrivals(1).await;

    let started = Instant::now();
    let (status, headers, body) = send_json(gw.client().get(url(&gw, "/echo"))).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let id = assert_error_body(&headers, &body, "queue_wait_exceeded");
    assert_eq!(header(&headers, "retry-after"), "1");
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );

    let record = gw.record_for(&id).await;
    assert_eq!(record["StatusCode"], 503);
    assert_eq!(record["ErrorCode"], "queue_wait_exceeded");
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    let waited = ms(&record["QueueWait"]);
    assert!(
        (300.0..1300.0).contains(&waited),
        "QueueWait {waited} ms is about max_request_wait_ms (300)"
    );
    assert_eq!(
        admin.service("iris").await["waiting"],
        0,
        "the queue is empty again"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "the refused request never reached the upstream"
    );

    upstream.open_gate();
    assert_eq!(answer("held request", held).await.0, StatusCode::OK);
}

#[tokio::test]
async fn beyond_max_queue_length_the_answer_is_an_immediate_503() {
    let upstream = MockUpstream::start().await;
    let gw = one_at_a_time(
        &upstream,
        "max_request_wait_ms = 30000\nmax_queue_length = 1",
    )
    .await;
    let admin = Admin::of(&gw).await;
    let held = spawn_get(gw.client(), url(&gw, "/gate"));
    upstream.wait_gate_arrivals(1).await;
    let waiting = spawn_get(gw.client(), url(&gw, "/echo?seq=queued"));
    admin.wait_waiting("iris", 1).await;

    let started = Instant::now();
    let (status, headers, body) = send_json(gw.client().get(url(&gw, "/echo?seq=refused"))).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let id = assert_error_body(&headers, &body, "queue_full");
    assert_eq!(header(&headers, "retry-after"), "1");
    // Far below the 30 s wait: it was refused without queueing.
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let record = gw.record_for(&id).await;
    assert_eq!(record["ErrorCode"], "queue_full");
    assert_eq!(record["QueueWait"], Value::Null, "{record}");
    assert_eq!(
        admin.service("iris").await["waiting"],
        1,
        "the waiter keeps its place"
    );

    upstream.open_gate();
    assert_eq!(answer("held request", held).await.0, StatusCode::OK);
    assert_eq!(answer("queued request", waiting).await.0, StatusCode::OK);
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(Seen::path_and_query)
        .collect();
    assert_eq!(paths, ["/gate", "/echo?seq=queued"]);
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place() {
    let upstream = MockUpstream::start().await;
    let gw = one_at_a_time(
        &upstream,
        "max_request_wait_ms = 30000\nmax_queue_length = 1",
    )
    .await;
    let admin = Admin::of(&gw).await;
    let held = spawn_get(gw.client(), url(&gw, "/gate"));
    upstream.wait_gate_arrivals(1).await;

    let mut tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    let head = format!(
        "GET {IRIS}/echo?seq=gone HTTP/1.1\r\nHost: localhost\r\nx-request-id: gone-1\r\n\r\n"
    );
    tls.write_all(head.as_bytes())
        .await
        .expect("write request head");
    admin.wait_waiting("iris", 1).await;
    // With the queue full, a newcomer is refused while the waiter is there.
    let (status, headers, body) = send_json(gw.client().get(url(&gw, "/echo?seq=refused"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error_body(&headers, &body, "queue_full");

    drop(tls);
    admin.wait_waiting("iris", 0).await;
    let record = gw.record_for("gone-1").await;
    assert_eq!(record["StatusCode"], 499, "{record}");
    assert_eq!(record["ErrorCode"], "client_disconnected");

    // Its place is free: the next request queues and is admitted when the slot frees.
    let next = spawn_get(gw.client(), url(&gw, "/echo?seq=next"));
    admin.wait_waiting("iris", 1).await;
    upstream.open_gate();
    assert_eq!(answer("held request", held).await.0, StatusCode::OK);
    assert_eq!(answer("next request", next).await.0, StatusCode::OK);
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(Seen::path_and_query)
        .collect();
    assert_eq!(
        paths,
        ["/gate", "/echo?seq=next"],
        "the abandoned request was never sent"
    );
}

#[tokio::test]
async fn an_upstream_timeout_frees_the_slot_for_the_next_waiter() {
    let upstream = MockUpstream::start().await;
    let gw = one_at_a_time(
        &upstream,
        "scoring_timeout_ms = 300\nmax_request_wait_ms = 30000",
    )
    .await;
    let admin = Admin::of(&gw).await;
    let started = Instant::now();
    let hung = spawn_get(gw.client(), url(&gw, "/hang"));
    upstream
        .wait_for("the hanging request to arrive", |s| s.path == "/hang")
        .await;
    let next = spawn_get(gw.client(), url(&gw, "/echo?seq=next"));
    admin.wait_waiting("iris", 1).await;

    let (status, headers, body) = answer("hanging request", hung).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let body: Value = serde_json::from_slice(&body).expect("JSON error body");
    assert_error_body(&headers, &body, "upstream_timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let (status, headers, _) = answer("next request", next).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "admitted once the timed-out request let go"
    );
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    assert!(ms(&record["QueueWait"]) > 0.0, "{record}");
    assert_eq!(admin.service("iris").await["waiting"], 0);
}
