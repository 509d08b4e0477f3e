//! Slow and stalled peers: a request body that stops mid-stream (408), a response body that stops
//! mid-stream (the client's stream is cut, the record says why), a request head that never ends
//! (slowloris, closed at `header_read_timeout_ms`), and what `tests/proxy_errors.rs` leaves out
//! of the 413s (HTTP/2).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::check::{assert_error_body, send_json};
use crate::support::pki::MODERN;
use crate::support::tls_upstream::StallingUpstream;
use crate::support::upstream::BodyEnd;
use crate::support::wire::{self, RawResponse};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, within};

#[tokio::test]
async fn a_stalled_request_body_is_408_and_the_upstream_request_is_aborted() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "body_idle_timeout_ms = 300")
        .start()
        .await;

    let mut tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    let head = format!(
        "POST {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nx-request-id: stalled-body\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    let started = Instant::now();
    // Part of the body, then nothing: the chunked body never ends.
    let raw = RawResponse::parse(&wire::exchange(&mut tls, head.as_bytes()).await);
    let took = started.elapsed();
    assert_eq!(raw.status, 408);
    assert_eq!(raw.header("connection"), Some("close"));
    let body: Value = serde_json::from_slice(&raw.body).expect("JSON error body");
    assert_eq!(body["error"]["code"], "request_body_timeout");
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );

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
    assert_eq!(seen.body.bytes, 5);
    let record = gw.record_for("stalled-body").await;
    assert_eq!(record["StatusCode"], 408);
    assert_eq!(record["ErrorCode"], "request_body_timeout");
    assert_eq!(record["RequestBytes"], 5);
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_and_recorded_as_upstream_body_timeout() {
    let (declared, sent) = (100_000, 1000);
    let upstream = StallingUpstream::start(declared, sent).await;
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "body_idle_timeout_ms = 300")
        .start()
        .await;

    let started = Instant::now();
    let resp = within(
        "response head",
        gw.client()
            .get(gw.url(&format!("{IRIS}/data")))
            .header("x-request-id", "stalled-response")
            .send(),
    )
    .await
    .expect("response head");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the status went out before the stall"
    );
    let mut stream = resp.bytes_stream();
    upstream.wait_stalled().await;
    let mut received = 0;
    let outcome = within("the cut-off response body", async {
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(bytes) => received += bytes.len(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    assert!(
        outcome.is_err(),
        "a body that stopped short of its Content-Length must not end cleanly"
    );
    assert_eq!(received, sent, "everything the upstream sent was passed on");
    // The idle timer starts only once data stopped flowing, so no earlier than the request.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "cut after {took:?}, not at the idle timeout"
    );

    let record = gw.record_for("stalled-response").await;
    assert_eq!(record["StatusCode"], 200);
    assert_eq!(record["ErrorCode"], "upstream_body_timeout");
    assert_eq!(record["ResponseBytes"], sent);
    assert_eq!(
        gw.metric(
            r#"scoregate_upstream_errors_total{kind="upstream_body_timeout",service="iris"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_closed_at_the_header_read_timeout() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("header_read_timeout_ms = 300")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;

    let mut tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    let partial = format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: a");
    let took = wire::closed_unanswered(&mut tls, partial.as_bytes()).await;
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
    assert!(upstream.requests().is_empty());

    let (status, _, _) = send_json(gw.client().get(gw.url(&format!("{IRIS}/echo")))).await;
    assert_eq!(status, StatusCode::OK, "the gateway keeps serving");
}

/// hyper-util's `auto` builder reads the first bytes itself to tell HTTP/1 from HTTP/2, with no
/// timer; hyper's `header_read_timeout` only starts once HTTP/1 has been chosen. A client that
/// completes the TLS handshake and sends nothing (or only the first bytes of the HTTP/2 preface)
/// therefore keeps its connection, and its `max_connections` slot, forever.
#[tokio::test]
async fn a_client_silent_after_the_handshake_is_closed_at_the_header_read_timeout() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("header_read_timeout_ms = 300")
        .server("max_connections = 1")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;

    let mut silent = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "a connection that sent nothing for 5 s (header_read_timeout_ms = 300) is still open: {closed:?}"
    );

    // The one connection slot is free again for a real client.
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        gw.client().get(gw.url(&format!("{IRIS}/echo"))).send(),
    )
    .await
    .expect("a real client is served once the silent one is gone")
    .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);

    // Only the start of the HTTP/2 preface: still undecided, still no timer.
    let mut preface = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"h2"])
        .await;
    preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write partial preface");
    // An HTTP/2 server may send its own SETTINGS first (RFC 9113 §3.4); read past them until
    // the connection ends.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match preface.read(&mut buf).await {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "a connection stuck in the HTTP/2 preface for 5 s is still open: {closed:?}"
    );
}

#[tokio::test]
async fn declared_body_over_the_limit_is_413_over_http2() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "max_body_bytes = 1024")
        .start()
        .await;
    let (status, headers, body) = send_json(
        gw.h2_client()
            .post(gw.url(&format!("{IRIS}/echo")))
            .body(vec![1u8; 2048]),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let id = assert_error_body(&headers, &body, "payload_too_large");
    assert!(
        headers.get("connection").is_none(),
        "no Connection header in HTTP/2"
    );
    assert_eq!(gw.record_for(&id).await["StatusCode"], 413);
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());

    // The HTTP/2 connection is still usable.
    let (status, _, echo) = send_json(
        gw.h2_client()
            .post(gw.url(&format!("{IRIS}/echo")))
            .body(vec![1u8; 1024]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["bodyBytes"], 1024);
}
