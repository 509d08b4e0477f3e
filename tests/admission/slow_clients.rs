//! Slow clients cannot hold a service's admission slots: a client that stops reading its
//! response (HTTP/2 with a zero initial window, HTTP/1.1 with a small receive buffer), a client
//! that trickles its request body, and a request past its total deadline all end with a record
//! saying why, and free the slot for the next caller. Every gateway here admits one request at a
//! time and lets the next wait far longer than the bounds under test, so the second caller's 200
//! proves the slot was freed (on code without the bounds it gets 503 once its wait runs out).

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use crate::support::pki::MODERN;
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, within};

/// One slot, a long wait for it, and the bounds under test.
async fn one_slot_gateway(upstream: &MockUpstream, bounds: &str) -> TestGateway {
    GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            &format!("max_concurrent_requests = 1\nmax_request_wait_ms = 30000\n{bounds}"),
        )
        .start()
        .await
}

/// The slot is free: a second caller is served.
async fn second_caller_is_served(gw: &TestGateway) {
    let resp = within(
        "the second caller's answer",
        gw.client()
            .post(gw.url(&format!("{IRIS}/echo")))
            .body("next")
            .send(),
    )
    .await
    .expect("the second caller got an answer");
    assert_eq!(resp.status(), StatusCode::OK, "the slot was freed");
}

async fn record_with_code(gw: &TestGateway, code: &str) -> serde_json::Value {
    crate::support::wait_until(&format!("a record with ErrorCode {code}"), || async {
        gw.records().iter().any(|r| r["ErrorCode"] == code)
    })
    .await;
    gw.records()
        .into_iter()
        .find(|r| r["ErrorCode"] == code)
        .expect("found above")
}

#[tokio::test]
async fn an_http2_client_with_a_zero_window_is_disconnected_and_frees_its_slot() {
    let upstream = MockUpstream::start().await;
    let gw = one_slot_gateway(&upstream, "send_timeout_ms = 300").await;
    let tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"h2"])
        .await;
    let (mut h2, conn) = within(
        "HTTP/2 handshake",
        h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tls),
    )
    .await
    .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(gw.url(&format!("{IRIS}/stream?bytes={}", 1 << 20)))
        .header("x-request-id", "zero-window")
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(req, true).expect("send");
    // The head is not flow-controlled; the body never gets a window.
    let response = within("response head", response).await.expect("head");
    assert_eq!(response.status(), 200);

    second_caller_is_served(&gw).await;
    let record = record_with_code(&gw, "client_send_timeout").await;
    assert_eq!(record["RequestId"], "zero-window");
    assert_eq!(record["StatusCode"], 200, "the status the client saw");
    within("the connection to be closed", conn)
        .await
        .expect("connection task")
        .ok();
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_is_disconnected_and_frees_its_slot() {
    let upstream = MockUpstream::start().await;
    let gw = one_slot_gateway(&upstream, "send_timeout_ms = 300").await;
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let tcp = within("connect", socket.connect(gw.scoring_addr))
        .await
        .expect("connect");
    let connector = TlsConnector::from(gw.pki().rustls_config(MODERN, &[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = within("TLS", connector.connect(name, tcp))
        .await
        .expect("TLS handshake");
    let head = format!(
        "GET {IRIS}/stream?bytes={} HTTP/1.1\r\nHost: localhost\r\nx-request-id: not-reading\r\n\r\n",
        64 << 20
    );
    tls.write_all(head.as_bytes()).await.expect("send head");
    // Read nothing; the gateway's buffers and the kernel's fill, then nothing moves.

    second_caller_is_served(&gw).await;
    let record = record_with_code(&gw, "client_send_timeout").await;
    assert_eq!(record["RequestId"], "not-reading");
    // The connection was closed: draining it ends (with EOF or a reset) well before 64 MiB.
    let mut sink = vec![0u8; 1 << 16];
    let mut read = 0usize;
    within("the closed connection to drain", async {
        while let Ok(n) = tls.read(&mut sink).await {
            if n == 0 {
                break;
            }
            read += n;
        }
    })
    .await;
    assert!(
        read < 64 << 20,
        "the response was cut, {read} bytes arrived"
    );
}

#[tokio::test]
async fn a_trickled_request_body_is_408_and_frees_its_slot() {
    let upstream = MockUpstream::start().await;
    let gw = one_slot_gateway(
        &upstream,
        "min_body_rate_bytes_per_s = 1000\nmin_body_rate_window_ms = 300",
    )
    .await;
    let mut tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    let head = format!(
        "POST {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nx-request-id: trickle\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.expect("send head");
    let (mut reader, mut writer) = tokio::io::split(tls);
    // One byte every 50 ms (20 B/s, far inside the idle timeout) until the gateway answers.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if writer.write_all(b"1\r\nx\r\n").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    within("the 408", async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_body_too_slow"), "{text}");

    second_caller_is_served(&gw).await;
    let record = record_with_code(&gw, "request_body_too_slow").await;
    assert_eq!(record["RequestId"], "trickle");
    assert_eq!(record["StatusCode"], 408);
}

#[tokio::test]
async fn a_request_past_its_deadline_is_ended_and_frees_its_slot() {
    let upstream = MockUpstream::start().await;
    let gw = one_slot_gateway(&upstream, "request_timeout_ms = 300").await;
    let hung = within(
        "the hung request to end",
        gw.client()
            .get(gw.url(&format!("{IRIS}/hang")))
            .header("x-request-id", "deadline")
            .send(),
    )
    .await;
    assert!(hung.is_err(), "the connection was closed: {hung:?}");

    second_caller_is_served(&gw).await;
    let record = record_with_code(&gw, "request_deadline_exceeded").await;
    assert_eq!(record["RequestId"], "deadline");
    assert_eq!(record["StatusCode"], 408);
}
