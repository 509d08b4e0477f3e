//! Limits of the scoring listener itself: `max_connections` (a connection beyond it waits in the
//! kernel's backlog and is served once another closes or a reload raises the cap), request heads over `max_header_bytes` or
//! `max_headers` (431, answered by hyper before the pipeline), and
//! `http2_max_concurrent_streams`.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;

use crate::support::admin_api::Admin;
use crate::support::pki::MODERN;
use crate::support::wire::{self, RawResponse};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, within};
use crate::{answer, spawn_get};

/// How long a test watches for something that must not happen (a connection served beyond the
/// cap, a stream beyond the limit). Not synchronisation: the test passes only if nothing happens.
const QUIET: Duration = Duration::from_millis(500);

fn echo_request(gw: &TestGateway) -> Request<Full<Bytes>> {
    Request::get(gw.url(&format!("{IRIS}/echo")))
        .header("host", format!("localhost:{}", gw.scoring_addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test]
async fn a_connection_beyond_max_connections_is_served_once_another_closes() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("max_connections = 2")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;

    // A completed handshake means the gateway accepted the connection; both stay open.
    let first = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    let _second = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;

    let pki = gw.pki().clone();
    let (addr, req) = (gw.scoring_addr, echo_request(&gw));
    let mut third = tokio::spawn(async move {
        let tls = pki.tls_connect(addr, MODERN, &[b"http/1.1"]).await;
        wire::send_h1_over(TokioIo::new(tls), req).await.status()
    });
    assert!(
        tokio::time::timeout(QUIET, &mut third).await.is_err(),
        "a third connection was served while two were open (max_connections = 2)"
    );

    drop(first);
    let status = within("the third connection to be served", third)
        .await
        .expect("third connection task");
    assert_eq!(status, StatusCode::OK);
}

/// `max_connections` is reloadable: raising it lets a connection waiting in the backlog in, with
/// the connections that filled the old cap still open.
#[tokio::test]
async fn a_reload_that_raises_max_connections_serves_the_waiting_connection() {
    let upstream = MockUpstream::start().await;
    let builder = |cap: &str| {
        GatewayBuilder::new()
            .server(cap)
            .service("iris", IRIS, &upstream.url())
    };
    let gw = builder("max_connections = 1").start().await;
    let _first = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    let pki = gw.pki().clone();
    let (addr, req) = (gw.scoring_addr, echo_request(&gw));
    let mut second = tokio::spawn(async move {
        let tls = pki.tls_connect(addr, MODERN, &[b"http/1.1"]).await;
        wire::send_h1_over(TokioIo::new(tls), req).await.status()
    });
    assert!(
        tokio::time::timeout(QUIET, &mut second).await.is_err(),
        "a second connection was served while one was open (max_connections = 1)"
    );

    crate::support::certs::write_atomic(
        &gw.dir().join("scoregate.toml"),
        &builder("max_connections = 2").toml(gw.pki(), gw.dir()),
    );
    let (code, summary) = Admin::of(&gw).await.reload().await;
    assert_eq!(code, StatusCode::OK, "{summary}");
    assert_eq!(
        summary["restartRequired"],
        serde_json::json!([]),
        "{summary}"
    );
    let status = within("the waiting connection to be served", second)
        .await
        .expect("second connection task");
    assert_eq!(status, StatusCode::OK);
}

/// The listener limits are reloadable: a new connection gets the limit in force when it is
/// accepted.
#[tokio::test]
async fn a_reload_that_raises_max_header_bytes_applies_to_new_connections() {
    let upstream = MockUpstream::start().await;
    let builder = |limit: &str| {
        GatewayBuilder::new()
            .server(limit)
            .service("iris", IRIS, &upstream.url())
    };
    let gw = builder("max_header_bytes = 8192").start().await;
    let request = format!(
        "GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12_000)
    );
    let send = || async {
        let mut tls = gw
            .pki()
            .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
            .await;
        RawResponse::parse(&wire::exchange(&mut tls, request.as_bytes()).await).status
    };
    assert_eq!(send().await, 431, "12 KB of headers over an 8 KiB limit");

    crate::support::certs::write_atomic(
        &gw.dir().join("scoregate.toml"),
        &builder("max_header_bytes = 32768").toml(gw.pki(), gw.dir()),
    );
    let (code, summary) = Admin::of(&gw).await.reload().await;
    assert_eq!(code, StatusCode::OK, "{summary}");
    assert_eq!(
        summary["restartRequired"],
        serde_json::json!([]),
        "{summary}"
    );
    assert_eq!(
        send().await,
        200,
        "12 KB of headers under the reloaded 32 KiB limit"
    );
}

#[tokio::test]
async fn oversized_or_overlong_request_heads_get_431() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("max_header_bytes = 8192")
        .server("max_headers = 16")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let head = |extra: &str| {
        format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
    };
    let send = |text: String| {
        let gw = &gw;
        async move {
            let mut tls = gw
                .pki()
                .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
                .await;
            RawResponse::parse(&wire::exchange(&mut tls, text.as_bytes()).await)
        }
    };

    let huge = format!("X-Huge: {}\r\n", "a".repeat(9000));
    assert_eq!(
        send(head(&huge)).await.status,
        431,
        "one header over max_header_bytes"
    );

    let headers = |n: usize, value: &str| {
        (0..n).fold(String::new(), |mut out, i| {
            write!(out, "X-H{i}: {value}\r\n").expect("formatting into a String cannot fail");
            out
        })
    };
    assert_eq!(
        send(head(&headers(20, "v"))).await.status,
        431,
        "more than max_headers"
    );

    // Within both limits (12 headers, ~7 KB) the request goes through.
    let fine = headers(10, &"b".repeat(700));
    let ok = send(head(&fine)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the request within limits was forwarded"
    );
}

#[tokio::test]
async fn http2_streams_beyond_the_limit_wait_for_a_free_stream() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("http2_max_concurrent_streams = 2")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    // One exchange first, so the client has the server's SETTINGS before it opens streams.
    let warm = answer(
        "warm-up request",
        spawn_get(gw.h2_client(), gw.url(&format!("{IRIS}/echo"))),
    )
    .await;
    assert_eq!(warm.0, StatusCode::OK);

    let held: Vec<_> = (0..3)
        .map(|_| spawn_get(gw.h2_client(), gw.url(&format!("{IRIS}/gate"))))
        .collect();
    upstream.wait_gate_arrivals(2).await;
    assert!(
        tokio::time::timeout(QUIET, upstream.wait_gate_arrivals(3))
            .await
            .is_err(),
        "a third stream reached the upstream (http2_max_concurrent_streams = 2)"
    );

    upstream.open_gate();
    for (i, task) in held.into_iter().enumerate() {
        let (status, _, _) = answer(&format!("held stream {i}"), task).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|s| s.path == "/gate")
            .count(),
        3
    );
}
