//! Connections that cannot be held for ever: an HTTP/2 connection with no open stream is sent
//! GOAWAY after `http2_idle_timeout_ms` (keep-alive PINGs, which any client answers, do not keep
//! it), one past `http2_max_connection_age_ms` is sent GOAWAY too, and one client address gets at
//! most `max_connections_per_ip` connections.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::AsyncReadExt;

use crate::support::pki::MODERN;
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};

/// How long a test watches for a close that must not happen. Not synchronisation: the test
/// passes only if nothing happens.
const QUIET: Duration = Duration::from_millis(800);

/// An HTTP/2 connection to `gw`: the request handle and the connection's task, which ends when
/// the gateway closes the connection.
async fn h2_connection(
    gw: &TestGateway,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"h2"])
        .await;
    let (h2, conn) = within("HTTP/2 handshake", h2::client::handshake(tls))
        .await
        .expect("HTTP/2 handshake");
    (h2, tokio::spawn(conn))
}

async fn get(h2: &mut h2::client::SendRequest<bytes::Bytes>, url: String) -> u16 {
    let req = http::Request::get(url).body(()).expect("request");
    let (response, _) = h2.send_request(req, true).expect("send");
    let response = within("response", response).await.expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = within("body", body.data()).await {
        chunk.expect("body");
    }
    status
}

#[tokio::test]
async fn an_http2_connection_without_open_streams_is_sent_goaway_after_the_idle_timeout() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("http2_idle_timeout_ms = 300")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;

    // A stream held open (the upstream waits at /gate) keeps the connection, however long.
    let (mut h2, mut conn) = h2_connection(&gw).await;
    let req = http::Request::get(gw.url(&format!("{IRIS}/gate")))
        .body(())
        .expect("request");
    let (held, _) = h2.send_request(req, true).expect("send");
    upstream.wait_gate_arrivals(1).await;
    assert!(
        tokio::time::timeout(QUIET, &mut conn).await.is_err(),
        "closed with a stream open"
    );
    upstream.open_gate();
    let held = within("held response", held).await.expect("response");
    assert_eq!(held.status(), 200);
    drop(held);

    // Then idle: GOAWAY, and the connection ends cleanly.
    let ended = within("the idle connection to be closed", conn)
        .await
        .expect("connection task");
    assert!(ended.is_ok(), "a graceful GOAWAY: {ended:?}");

    // A connection that never opens a stream is closed the same way.
    let (_h2, conn) = h2_connection(&gw).await;
    let ended = within("the unused connection to be closed", conn)
        .await
        .expect("connection task");
    assert!(ended.is_ok(), "{ended:?}");
}

#[tokio::test]
async fn an_http2_connection_past_its_maximum_age_is_sent_goaway() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("http2_max_connection_age_ms = 300")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let (mut h2, conn) = h2_connection(&gw).await;
    assert_eq!(get(&mut h2, gw.url(&format!("{IRIS}/echo"))).await, 200);
    let ended = within("the aged connection to be closed", conn)
        .await
        .expect("connection task");
    assert!(ended.is_ok(), "a graceful GOAWAY: {ended:?}");
}

#[tokio::test]
async fn one_address_gets_at_most_max_connections_per_ip() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("max_connections_per_ip = 2")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let (mut first, first_conn) = h2_connection(&gw).await;
    let (mut second, second_conn) = h2_connection(&gw).await;
    assert_eq!(get(&mut first, gw.url(&format!("{IRIS}/echo"))).await, 200);
    assert_eq!(get(&mut second, gw.url(&format!("{IRIS}/echo"))).await, 200);

    // The third is closed at once, before any TLS byte.
    let mut third = within(
        "TCP connect",
        tokio::net::TcpStream::connect(gw.scoring_addr),
    )
    .await
    .expect("the kernel accepts the connection");
    let mut byte = [0u8; 1];
    let read = within("the third connection to be closed", third.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(gw.counter("scoregate_connections_refused_per_ip_total"), 1);

    // Once the two are gone, the address is welcome again.
    drop((first, second));
    first_conn.abort();
    second_conn.abort();
    wait_until("a new connection to be served", || async {
        match gw
            .client()
            .get(gw.url(&format!("{IRIS}/echo")))
            .send()
            .await
        {
            Ok(resp) => resp.status() == StatusCode::OK,
            Err(_) => false,
        }
    })
    .await;
}
