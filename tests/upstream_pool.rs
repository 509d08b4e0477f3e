//! The gateway's pool of upstream connections, seen from the scoring container: keep-alive
//! connections are reused, and a connection is never handed to a request while it cannot
//! serve it (closed by the upstream, still carrying an earlier exchange, or abandoned mid-body).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use reqwest::StatusCode;
use support::pattern::MIB;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A gateway in front of `upstream` that probes its health once at start and then not again
/// during a test, so only the test's own requests use the pool.
async fn gateway(upstream: &str) -> TestGateway {
    gateway_with(upstream, "").await
}

/// [`gateway`] with extra `[[service]]` settings.
async fn gateway_with(upstream: &str, service: &str) -> TestGateway {
    let gw = GatewayBuilder::new()
        .server("health_interval_ms = 600000")
        .service_with("iris", IRIS, upstream, service)
        .start()
        .await;
    gw.wait_ready().await;
    gw
}

const OPENED: &str = r#"scoregate_upstream_connections_total{service="iris"}"#;

async fn post_ok(gw: &TestGateway, path: &str) -> Bytes {
    let resp = within(
        "POST through the gateway",
        gw.client().post(gw.url(path)).body("{}").send(),
    )
    .await
    .expect("gateway answered");
    assert_eq!(resp.status(), StatusCode::OK, "POST {path}");
    within("response body", resp.bytes()).await.expect("body")
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream.url()).await;
    let probes = gw.counter(OPENED);

    for _ in 0..5 {
        post_ok(&gw, "/api/v1/service/iris/score").await;
    }
    let conns: Vec<u64> = upstream.requests().iter().map(|s| s.conn).collect();
    assert_eq!(conns.len(), 5);
    assert!(
        conns.iter().all(|c| *c == conns[0]),
        "every request on one upstream connection: {conns:?}"
    );
    // One connection, reused by every request. (The health probe's own connection is not kept:
    // its next probe comes after `upstream_keepalive_ms`.)
    assert_eq!(gw.counter(OPENED), probes + 1);
}

#[tokio::test]
async fn connections_the_upstream_closes_are_not_reused() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream.url()).await;
    let probes = gw.counter(OPENED);

    // `/close` answers with `Connection: close` and then closes.
    for _ in 0..3 {
        post_ok(&gw, "/api/v1/service/iris/close").await;
    }
    let mut conns: Vec<u64> = upstream.requests().iter().map(|s| s.conn).collect();
    conns.dedup();
    assert_eq!(conns.len(), 3, "a new connection for each request");
    assert_eq!(gw.counter(OPENED), probes + 3);
}

#[tokio::test]
async fn an_idle_connection_is_not_reused_after_upstream_keepalive() {
    let upstream = MockUpstream::start().await;
    let gw = gateway_with(&upstream.url(), "upstream_keepalive_ms = 100").await;

    post_ok(&gw, "/api/v1/service/iris/first").await;
    let opened = gw.counter(OPENED);
    // What is under test is the passing of time itself: the connection idles past its limit.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    post_ok(&gw, "/api/v1/service/iris/second").await;

    let first = upstream
        .wait_for("first", |s| s.path.ends_with("/first"))
        .await;
    let second = upstream
        .wait_for("second", |s| s.path.ends_with("/second"))
        .await;
    assert_ne!(first.conn, second.conn, "an expired connection was reused");
    assert_eq!(gw.counter(OPENED), opened + 1);
}

#[tokio::test]
async fn upstream_keepalive_zero_never_reuses_a_connection() {
    let upstream = MockUpstream::start().await;
    let gw = gateway_with(&upstream.url(), "upstream_keepalive_ms = 0").await;

    for _ in 0..3 {
        post_ok(&gw, "/api/v1/service/iris/score").await;
    }
    let mut conns: Vec<u64> = upstream.requests().iter().map(|s| s.conn).collect();
    conns.dedup();
    assert_eq!(conns.len(), 3, "a new connection for each request");
    assert_eq!(gw.counter(OPENED), 1 + 3, "the probe's and one per request");
}

/// An HTTP/1.1 upstream that answers one request per connection and then closes it without
/// saying so (no `Connection: close`), like a container whose keep-alive timeout is shorter
/// than the gateway's pool timeout. Returns its address and the connections it accepted.
async fn silently_closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head and whatever body its Content-Length announces.
                let body_len = loop {
                    let Ok(n @ 1..) = stream.read(&mut buf).await else {
                        return;
                    };
                    head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        break (end + 4 + len).saturating_sub(head.len());
                    }
                };
                let mut rest = vec![0u8; body_len];
                if stream.read_exact(&mut rest).await.is_err() {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Dropped here: closed right after the response.
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_silently_is_replaced() {
    let (addr, accepted) = silently_closing_upstream().await;
    let gw = gateway(&format!("http://{addr}")).await;
    let before = accepted.load(Ordering::SeqCst);

    for _ in 0..5 {
        let body = post_ok(&gw, "/api/v1/service/iris/score").await;
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst) - before,
        5,
        "one new connection per request"
    );
    assert_eq!(gw.counter(OPENED), 1 + 5, "the probe's and one per request");
}

#[tokio::test]
async fn a_connection_still_sending_a_request_body_is_not_lent_out() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream.url()).await;

    // `/hop` answers at once without reading the body; this body stays open until the test
    // ends it, so its upstream connection is still busy after the response has ended.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tx.send(Ok(Bytes::from_static(b"first piece")))
        .await
        .expect("body channel open");
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let resp = within(
        "response to the open upload",
        gw.client()
            .post(gw.url("/api/v1/service/iris/hop"))
            .body(body)
            .send(),
    )
    .await
    .expect("gateway answered");
    assert_eq!(resp.status(), StatusCode::OK);
    within("its body", resp.bytes()).await.expect("body");
    let busy = upstream
        .wait_for("the open upload", |s| s.path.ends_with("/hop"))
        .await;

    // The next request must not wait for the upload: it gets another connection.
    post_ok(&gw, "/api/v1/service/iris/score").await;
    let next = upstream
        .wait_for("the next request", |s| s.path.ends_with("/score"))
        .await;
    assert_ne!(next.conn, busy.conn, "the busy connection was lent out");
    drop(tx);
}

#[tokio::test]
async fn a_response_abandoned_mid_body_does_not_return_its_connection() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream.url()).await;

    let url = gw.url(&format!("/api/v1/service/iris/stream?bytes={}", 64 * MIB));
    let mut resp = within("stream response head", gw.client().get(url).send())
        .await
        .expect("gateway answered");
    assert_eq!(resp.status(), StatusCode::OK);
    within("first piece", resp.chunk())
        .await
        .expect("body")
        .expect("a first piece");
    let abandoned = upstream
        .wait_for("the stream request", |s| s.path.ends_with("/stream"))
        .await;
    drop(resp);

    post_ok(&gw, "/api/v1/service/iris/score").await;
    let next = upstream
        .wait_for("the next request", |s| s.path.ends_with("/score"))
        .await;
    assert_ne!(
        next.conn, abandoned.conn,
        "a connection with unread response bytes was reused"
    );
}

/// The receiving half of a channel as a `Stream` (for `reqwest::Body::wrap_stream`).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
