//! The scoring listener's TLS policy and robustness: TLS 1.2 and 1.3 accepted, ALPN `h2` and
//! `http/1.1`, TLS 1.1 refused, non-TLS bytes and silent clients cut off without harming the
//! server, and every failed handshake counted.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use rustls::ProtocolVersion;
use support::pki::MODERN;
use support::wire::{self, RawResponse};
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HANDSHAKE_ERRORS: &str = "scoregate_tls_handshake_errors_total";

async fn gateway(upstream: &MockUpstream) -> TestGateway {
    GatewayBuilder::new()
        .service("iris", IRIS, &upstream.url())
        .start()
        .await
}

fn get(gw: &TestGateway, path: &str) -> Request<Full<Bytes>> {
    Request::get(gw.url(path))
        .header("host", format!("localhost:{}", gw.scoring_addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// After a client ends, its failed handshake shows in the counter (written just after the
/// server drops the connection, hence the wait).
async fn wait_handshake_errors(gw: &TestGateway, n: f64) {
    wait_until(&format!("{HANDSHAKE_ERRORS} to reach {n}"), || async move {
        gw.metric(HANDSHAKE_ERRORS) == Some(n)
    })
    .await;
}

/// A valid request still works (the server survived whatever came before).
async fn assert_still_serving(gw: &TestGateway) {
    let resp = within(
        "follow-up request",
        gw.client().get(gw.url("/api/v1/service/iris/echo")).send(),
    )
    .await
    .expect("follow-up request");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn tls12_and_tls13_are_accepted() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream).await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let tls = gw
            .pki()
            .tls_connect(gw.scoring_addr, &[version], &[b"http/1.1"])
            .await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        let resp =
            wire::send_h1_over(TokioIo::new(tls), get(&gw, "/api/v1/service/iris/echo")).await;
        assert_eq!(resp.status(), StatusCode::OK, "{expected:?}");
    }
    assert_eq!(gw.metric(HANDSHAKE_ERRORS), Some(0.0));
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http11() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream).await;

    let tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"h2", b"http/1.1"])
        .await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "server prefers h2"
    );
    // Boxed: hyper's HTTP/2 handshake makes a large future.
    let resp = Box::pin(wire::send_h2_over(
        TokioIo::new(tls),
        get(&gw, "/api/v1/service/iris/echo"),
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    let tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = wire::send_h1_over(TokioIo::new(tls), get(&gw, "/api/v1/service/iris/echo")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_11);

    // No ALPN at all (older clients): HTTP/1.1 still works.
    let tls = gw.pki().tls_connect(gw.scoring_addr, MODERN, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let resp = wire::send_h1_over(TokioIo::new(tls), get(&gw, "/api/v1/service/iris/echo")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A minimal TLS 1.1 `ClientHello`: record and `client_version` 0x0302, no `supported_versions`
/// extension, classic CBC suites, SNI `localhost`, P-256/X25519 and uncompressed points.
/// `signature_algorithms` is a TLS 1.2 extension that real TLS 1.1 clients do not send; with
/// `sig_algs` set it is included anyway, so the only thing left to refuse is the version.
fn tls11_client_hello(sig_algs: bool) -> Vec<u8> {
    fn u16be(v: usize) -> [u8; 2] {
        u16::try_from(v).expect("fits u16").to_be_bytes()
    }
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&u16be(data.len()));
        out.extend_from_slice(data);
        out
    }
    let host = b"localhost";
    let mut sni = u16be(host.len() + 3).to_vec();
    sni.push(0); // host_name
    sni.extend_from_slice(&u16be(host.len()));
    sni.extend_from_slice(host);
    let mut extensions = extension(0x0000, &sni);
    extensions.extend(extension(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]));
    extensions.extend(extension(0x000b, &[0x01, 0x00]));
    if sig_algs {
        // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
        extensions.extend(extension(
            0x000d,
            &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
        ));
    }

    let suites: [u16; 4] = [0xc013, 0xc009, 0x002f, 0x0035];
    let mut hello = vec![0x03, 0x02]; // client_version: TLS 1.1
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // empty session id
    hello.extend_from_slice(&u16be(suites.len() * 2));
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null only
    hello.extend_from_slice(&u16be(extensions.len()));
    hello.extend(extensions);

    let len = u32::try_from(hello.len()).expect("fits u32").to_be_bytes();
    let mut handshake = vec![0x01, len[1], len[2], len[3]]; // ClientHello, u24 length
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x02]; // handshake record, TLS 1.1
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend(handshake);
    record
}

/// Sends a `ClientHello` on a fresh connection and returns the alert description the server
/// answered with (RFC 5246 §7.2: type 21, version, length 2, level, description).
async fn alert_for(gw: &TestGateway, hello: &[u8]) -> u8 {
    let mut tcp = within("connect", TcpStream::connect(gw.scoring_addr))
        .await
        .expect("TCP connect");
    let reply = wire::exchange(&mut tcp, hello).await;
    assert!(
        reply.len() >= 7,
        "expected an alert record, got {reply:02x?}"
    );
    assert_eq!(reply[0], 21, "content type alert: {reply:02x?}");
    assert_eq!(&reply[3..5], &[0, 2], "alert length: {reply:02x?}");
    assert_eq!(reply[5], 2, "fatal level: {reply:02x?}");
    reply[6]
}

#[tokio::test]
async fn tls11_is_refused_with_a_fatal_alert() {
    const HANDSHAKE_FAILURE: u8 = 40;
    const PROTOCOL_VERSION: u8 = 70;
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream).await;

    // A genuine TLS 1.1 hello lacks signature_algorithms, which rustls checks first.
    let alert = alert_for(&gw, &tls11_client_hello(false)).await;
    assert!(
        [HANDSHAKE_FAILURE, PROTOCOL_VERSION].contains(&alert),
        "alert description {alert}"
    );
    wait_handshake_errors(&gw, 1.0).await;
    // With that extension present, the version alone is refused.
    assert_eq!(
        alert_for(&gw, &tls11_client_hello(true)).await,
        PROTOCOL_VERSION
    );
    wait_handshake_errors(&gw, 2.0).await;
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn plain_http_and_garbage_do_not_harm_the_server() {
    let upstream = MockUpstream::start().await;
    let gw = gateway(&upstream).await;

    let mut tcp = within("connect", TcpStream::connect(gw.scoring_addr))
        .await
        .expect("TCP connect");
    let reply = wire::exchange(
        &mut tcp,
        b"GET /api/v1/service/iris/echo HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "a plain-HTTP request must not be answered in plain HTTP: {:?}",
        String::from_utf8_lossy(&reply)
    );
    wait_handshake_errors(&gw, 1.0).await;

    let mut tcp = within("connect", TcpStream::connect(gw.scoring_addr))
        .await
        .expect("TCP connect");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    wire::exchange(&mut tcp, &garbage).await;
    wait_handshake_errors(&gw, 2.0).await;

    assert_still_serving(&gw).await;
    assert!(
        upstream.requests().len() == 1,
        "only the valid request was forwarded"
    );
}

#[tokio::test]
async fn silent_or_stalled_clients_are_cut_off_at_the_handshake_timeout() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("tls_handshake_timeout_ms = 200")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;

    let silent = async {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(gw.scoring_addr)
            .await
            .expect("TCP connect");
        let read = wire::read_to_close(&mut tcp).await;
        (started.elapsed(), read)
    };
    let stalled = async {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(gw.scoring_addr)
            .await
            .expect("TCP connect");
        // The first bytes of a ClientHello, then nothing.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .expect("write");
        let read = wire::read_to_close(&mut tcp).await;
        (started.elapsed(), read)
    };
    let ((silent_after, silent_read), (stalled_after, _)) =
        within("both clients to be disconnected", async {
            tokio::join!(silent, stalled)
        })
        .await;

    assert!(
        silent_read.is_empty(),
        "nothing is sent to a silent client: {silent_read:02x?}"
    );
    for after in [silent_after, stalled_after] {
        assert!(
            after >= Duration::from_millis(200),
            "cut off after {after:?}, before the timeout"
        );
        assert!(
            after < Duration::from_secs(5),
            "cut off only after {after:?}"
        );
    }
    wait_handshake_errors(&gw, 2.0).await;
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn plain_http_listener_serves_without_tls() {
    // The `[server.tls]`-less mode: a plain request is answered in plain HTTP, with
    // X-Forwarded-Proto `http`.
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .plain_http()
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let mut tcp = within("connect", TcpStream::connect(gw.scoring_addr))
        .await
        .expect("TCP connect");
    let reply = wire::exchange(
        &mut tcp,
        b"GET /api/v1/service/iris/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let resp = RawResponse::parse(&reply);
    assert_eq!(resp.status, 200);
    let seen = upstream.requests().pop().expect("forwarded");
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}
