//! Idle HTTP/1.1 connections give their HTTP buffers back (`server.idle_release_ms`) and are
//! closed at the idle limit (`header_read_timeout_ms`), without the client noticing anything else:
//! the next request on the same connection is served, even one whose head straddles a release,
//! a head that never ends is still cut off, and a drain closes parked connections at once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::pki::MODERN;
use crate::support::wire::{self, RawResponse};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};

const PARKED: &str = "scoregate_connections_parked";
const RELEASES: &str = "scoregate_connection_releases_total";

async fn gateway(upstream: &MockUpstream, server: &str) -> TestGateway {
    GatewayBuilder::new()
        .server(server)
        .service("iris", IRIS, &upstream.url())
        .start()
        .await
}

async fn connect(gw: &TestGateway) -> TlsStream<TcpStream> {
    gw.pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await
}

fn echo(body: &'static str, id: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{IRIS}/echo-body"))
        .header("host", "localhost")
        .header("x-request-id", id)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

/// Reads one response whose body has a `Content-Length` off a kept-alive stream.
async fn read_response(tls: &mut TlsStream<TcpStream>) -> RawResponse {
    let mut got = Vec::new();
    within("one response", async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tls.read(&mut buf).await.expect("read response");
            assert_ne!(n, 0, "connection closed mid-response: {got:?}");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = RawResponse::parse(&got[..end + 4]);
                let len: usize = head
                    .header("content-length")
                    .expect("content-length")
                    .parse()
                    .expect("numeric content-length");
                if got.len() >= end + 4 + len {
                    return;
                }
            }
        }
    })
    .await;
    RawResponse::parse(&got)
}

#[tokio::test]
async fn an_idle_connection_gives_its_buffers_back_and_serves_the_next_request() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream, "idle_release_ms = 100").await;
    let tls = connect(&gw).await;
    let (mut sender, conn) = within(
        "HTTP/1.1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(tls)),
    )
    .await
    .expect("handshake");
    let conn = tokio::spawn(conn);

    for (round, body) in ["first", "second"].into_iter().enumerate() {
        let id = format!("parked-{round}");
        let resp = within("response", sender.send_request(echo(body, &id)))
            .await
            .expect("response on the same connection");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("connection"), None, "kept alive");
        let got = within("body", resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(got, body.as_bytes());
        // Idle now: the connection is parked (holding no hyper buffers) and still open.
        wait_until("the idle connection to be parked", || async {
            gw.counter(PARKED) == 1 && gw.counter(RELEASES) == round as u64 + 1
        })
        .await;
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("x-request-id"), Some("parked-1"));

    drop(sender);
    within("client connection task", conn)
        .await
        .expect("no panic")
        .expect("the client saw a clean connection");
    wait_until("the closed connection to leave the gauge", || async {
        gw.counter(PARKED) == 0
    })
    .await;
}

#[tokio::test]
async fn one_request_and_a_pause_are_parked_after_one_release_period() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream, "idle_release_ms = 2000").await;
    let mut tls = connect(&gw).await;
    let request = format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
    // The request cannot begin before it is sent, so the park is at least one period after
    // this instant; the request that woke the connection counts for the first period, so it
    // takes one period (plus at most an eighth for the shared check grid), not two (the
    // upper bound leaves most of a period for a slow machine).
    let sent = Instant::now();
    tls.write_all(request.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.status, 200);
    wait_until("the connection to be parked", || async {
        gw.counter(PARKED) == 1
    })
    .await;
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(2000), "parked after {took:?}");
    assert!(took < Duration::from_millis(4000), "parked after {took:?}");
    assert_eq!(gw.counter(RELEASES), 1);

    // Woken again, it serves the next request and parks again after one period.
    let sent = Instant::now();
    tls.write_all(request.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.status, 200);
    wait_until("the connection to be parked again", || async {
        gw.counter(RELEASES) == 2 && gw.counter(PARKED) == 1
    })
    .await;
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(2000), "parked after {took:?}");
    assert!(took < Duration::from_millis(4000), "parked after {took:?}");
}

#[tokio::test]
async fn a_request_head_split_across_a_release_is_answered_whole() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream, "idle_release_ms = 100").await;
    let mut tls = connect(&gw).await;
    // A whole request and the start of the next head in one write: hyper answers the first and
    // holds the partial head when it is stopped for idleness.
    let first = format!(
        "GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\n\r\n\
         POST {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nx-part: one"
    );
    tls.write_all(first.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.status, 200);
    wait_until("a release while holding part of a head", || async {
        gw.counter(RELEASES) == 1
    })
    .await;
    tls.write_all(b"-two\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON echo");
    assert_eq!(echoed["bodyBytes"], 5);
    let seen = upstream
        .wait_for("the split request", |s| s.method == "POST")
        .await;
    assert_eq!(seen.header("x-part"), Some("one-two"));
}

#[tokio::test]
async fn a_head_that_never_ends_is_still_closed_at_the_header_read_timeout() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(
        &upstream,
        "idle_release_ms = 50\nheader_read_timeout_ms = 600",
    )
    .await;
    let mut tls = connect(&gw).await;
    let first = format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(first.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.status, 200);

    // A trickle that never completes a head must not restart the timer at every release.
    let partial = format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: a");
    let took = wire::closed_unanswered(&mut tls, partial.as_bytes()).await;
    assert!(took >= Duration::from_millis(600), "closed after {took:?}");
    assert!(took < Duration::from_millis(3000), "closed after {took:?}");
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_idle_limit() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(
        &upstream,
        "idle_release_ms = 100\nheader_read_timeout_ms = 700",
    )
    .await;
    let mut tls = connect(&gw).await;
    let first = format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
    // The request cannot begin before it is sent, so the close is at least the idle limit
    // after this instant.
    let sent = Instant::now();
    tls.write_all(first.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.status, 200);
    let rest = wire::read_to_close(&mut tls).await;
    let idle = sent.elapsed();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(idle >= Duration::from_millis(700), "closed after {idle:?}");
    assert_eq!(gw.counter(RELEASES), 1, "it was parked before being closed");
}

#[tokio::test]
async fn a_drain_closes_parked_connections_at_once() {
    let upstream = MockUpstream::start().await;
    let mut gw = gateway(&upstream, "idle_release_ms = 100").await;
    let mut tls = connect(&gw).await;
    let first = format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(first.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.status, 200);
    wait_until("the connection to be parked", || async {
        gw.counter(PARKED) == 1
    })
    .await;

    let started = Instant::now();
    assert_eq!(gw.shutdown().await, scoregate::server::Drained::Complete);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited {:?} for an idle connection",
        started.elapsed()
    );
    assert!(wire::read_to_close(&mut tls).await.is_empty());
}
