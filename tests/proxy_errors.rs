//! The error responses the gateway makes itself on the forwarding path, each with the JSON
//! envelope, its record and its metric: unknown route (404), unreachable or failing upstream
//! (502), silent upstream (504), and bodies over the service's limit (413).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::check::{assert_error_body, is_uuid_v4, send_json};
use support::pattern::{self, MIB};
use support::process::free_port;
use support::upstream::BodyEnd;
use support::wire::{self, RawResponse};
use support::{GatewayBuilder, IRIS, MockUpstream, iris_gateway, within};

#[tokio::test]
async fn unknown_route_is_404_json_and_never_forwarded() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;

    for path in ["/nope", "/api/v1/service/irisx/score", "/api/v1/service"] {
        let (status, headers, body) = send_json(gw.client().post(gw.url(path)).body("x")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let id = assert_error_body(&headers, &body, "route_not_found");
        assert!(is_uuid_v4(&id), "generated request id {id}");
        let record = gw.record_for(&id).await;
        assert_eq!(record["StatusCode"], 404);
        assert_eq!(record["ServiceName"], Value::Null);
        assert_eq!(record["ErrorCode"], "route_not_found");
    }
    // A caller's own request id is kept on errors too.
    let (_, headers, body) = send_json(
        gw.client()
            .get(gw.url("/nope"))
            .header("x-request-id", "mine-404"),
    )
    .await;
    assert_eq!(
        assert_error_body(&headers, &body, "route_not_found"),
        "mine-404"
    );
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

#[tokio::test]
async fn closed_upstream_port_is_502_unreachable() {
    let closed = free_port();
    let gw = iris_gateway(&format!("http://{closed}")).await;
    let (status, headers, body) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/score"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = assert_error_body(&headers, &body, "upstream_unreachable");
    let record = gw.record_for(&id).await;
    assert_eq!(record["ErrorCode"], "upstream_unreachable");
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    assert_eq!(
        gw.metric(r#"scoregate_upstream_errors_total{kind="upstream_unreachable",service="iris"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_closing_without_answer_is_502_upstream_error() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let (status, headers, body) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/reset"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = assert_error_body(&headers, &body, "upstream_error");
    assert_eq!(gw.record_for(&id).await["ErrorCode"], "upstream_error");
    assert_eq!(
        gw.metric(r#"scoregate_upstream_errors_total{kind="upstream_error",service="iris"}"#),
        Some(1.0)
    );
    // The pool dropped the dead connection: the next request gets a fresh one.
    let (status, _, _) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/echo"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn silent_upstream_is_504_and_the_gateway_keeps_serving() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "scoring_timeout_ms = 300")
        .start()
        .await;

    let started = Instant::now();
    let (status, headers, body) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/hang"))
            .body("{}"),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let id = assert_error_body(&headers, &body, "upstream_timeout");
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    upstream
        .wait_for("the upstream to have been asked", |s| {
            s.path.ends_with("/hang")
        })
        .await;
    let record = gw.record_for(&id).await;
    assert_eq!(record["ErrorCode"], "upstream_timeout");
    assert!(
        record["UpstreamDuration"]
            .as_f64()
            .is_some_and(|ms| ms >= 300.0),
        "{record}"
    );

    // Answers inside the timeout still pass, on the same client connection pool.
    let (status, _, _) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/slow?ms=20"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/echo"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        gw.metric(r#"scoregate_upstream_errors_total{kind="upstream_timeout",service="iris"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn declared_body_over_the_limit_is_413_without_contacting_the_upstream() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        // The gateway waits this long for the unsent body before it closes the connection.
        .server("lingering_timeout_ms = 100")
        .service_with("iris", IRIS, &upstream.url(), "max_body_bytes = 1024")
        .start()
        .await;

    // The head alone declares too much; the body is never sent, so the answer cannot depend on
    // how much of it the gateway reads.
    let mut tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, support::pki::MODERN, &[b"http/1.1"])
        .await;
    let head = "POST /api/v1/service/iris/echo HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/octet-stream\r\nContent-Length: 1025\r\n\r\n";
    let raw = RawResponse::parse(&wire::exchange(&mut tls, head.as_bytes()).await);
    assert_eq!(raw.status, 413);
    assert_eq!(raw.header("connection"), Some("close"));
    assert_eq!(raw.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&raw.body).expect("JSON error body");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let id = raw.header("x-request-id").expect("x-request-id");
    assert_eq!(body["requestId"], id);
    let record = gw.record_for(id).await;
    assert_eq!(record["StatusCode"], 413);
    assert_eq!(record["UpstreamStatusCode"], Value::Null);

    // Exactly at the limit passes, and is the only request the upstream ever saw.
    let (status, _, echo) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/echo"))
            .body(vec![7u8; 1024]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["bodyBytes"], 1024);
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_refused_and_the_upstream_request_aborted() {
    let limit = MIB;
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            &format!("max_body_bytes = {limit}"),
        )
        .start()
        .await;

    let body = reqwest::Body::wrap_stream(pattern::stream::<std::io::Error>(8 * MIB));
    let result = within(
        "over-limit chunked upload",
        gw.client()
            .post(gw.url("/api/v1/service/iris/echo"))
            .body(body)
            .send(),
    )
    .await;
    match result {
        Ok(resp) => {
            assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let body: Value = within("413 body", resp.json())
                .await
                .expect("JSON error body");
            assert_eq!(body["error"]["code"], "payload_too_large");
        }
        // The gateway closes the connection after its 413; a client still uploading may see
        // only the reset.
        Err(e) => assert!(!e.is_timeout(), "unexpected client error: {e}"),
    }

    let seen = upstream
        .wait_for("the upstream request to end", |s| {
            s.body.end != BodyEnd::Open
        })
        .await;
    assert_eq!(
        seen.body.end,
        BodyEnd::Aborted,
        "the upstream request was cut off"
    );
    assert!(
        seen.body.bytes <= limit,
        "upstream received {} bytes",
        seen.body.bytes
    );

    let record = gw.wait_for_records(1).await.pop().expect("record");
    assert_eq!(record["StatusCode"], 413);
    assert_eq!(record["ErrorCode"], "payload_too_large");

    let (status, _, _) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/echo"))
            .body("ok"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the gateway keeps serving");
}
