//! Requests below reqwest: exact bytes over TLS, and hyper's low-level HTTP/1.1 client.
//!
//! reqwest (like any high-level client) may add, merge or refuse headers; a test about what the
//! gateway strips or keeps must know exactly what was sent. [`send_h1`] sends a `http::Request`
//! as-is (hyper's connection-level client adds nothing but framing), and [`exchange`] writes raw
//! bytes and reads until the server closes.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pki::MODERN;
use super::{Pki, within};

/// Sends one request over a fresh TLS connection (ALPN `http/1.1`) and collects the response.
/// The request must carry its own `Host` header.
pub async fn send_h1(pki: &Pki, addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    let tls = pki.tls_connect(addr, MODERN, &[b"http/1.1"]).await;
    send_h1_over(TokioIo::new(tls), req).await
}

/// Sends one request over a plain TCP connection (e.g. straight to the mock upstream).
pub async fn send_h1_plain(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    let tcp = within("TCP connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("TCP connect");
    send_h1_over(TokioIo::new(tcp), req).await
}

/// Sends one request over an established connection (e.g. a TLS stream a test set up itself).
pub async fn send_h1_over<T>(io: TokioIo<T>, req: Request<Full<Bytes>>) -> Response<Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = within(
        "HTTP/1.1 handshake",
        hyper::client::conn::http1::handshake(io),
    )
    .await
    .expect("HTTP/1.1 client handshake");
    tokio::spawn(conn);
    let resp = within("HTTP/1.1 response", sender.send_request(req))
        .await
        .expect("HTTP/1.1 response");
    let (parts, body) = resp.into_parts();
    let body = within("HTTP/1.1 response body", body.collect())
        .await
        .expect("HTTP/1.1 response body")
        .to_bytes();
    Response::from_parts(parts, body)
}

/// Sends one request over an established connection that negotiated `h2`.
pub async fn send_h2_over<T>(io: TokioIo<T>, req: Request<Full<Bytes>>) -> Response<Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = within(
        "HTTP/2 handshake",
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io),
    )
    .await
    .expect("HTTP/2 client handshake");
    tokio::spawn(conn);
    let resp = within("HTTP/2 response", sender.send_request(req))
        .await
        .expect("HTTP/2 response");
    let (parts, body) = resp.into_parts();
    let body = within("HTTP/2 response body", body.collect())
        .await
        .expect("HTTP/2 response body")
        .to_bytes();
    Response::from_parts(parts, body)
}

/// Writes `bytes`, then reads until the peer closes (or fails); returns what was read.
pub async fn exchange<S>(stream: &mut S, bytes: &[u8]) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("write request bytes", stream.write_all(bytes))
        .await
        .expect("write request bytes");
    read_to_close(stream).await
}

/// Writes `bytes`, then asserts the peer closes without answering; returns how long that took
/// (e.g. a partial request head cut off at the header read timeout).
pub async fn closed_unanswered<S>(stream: &mut S, bytes: &[u8]) -> std::time::Duration
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = std::time::Instant::now();
    let answered = exchange(stream, bytes).await;
    let took = started.elapsed();
    assert!(
        answered.is_empty(),
        "closed without an answer: {:?}",
        String::from_utf8_lossy(&answered)
    );
    took
}

/// Reads until EOF or a read error (a reset counts as closing); fails after the deadline.
pub async fn read_to_close<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    within("the peer to close the connection", async {
        let mut buf = vec![0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// A raw HTTP/1.1 response split into status, headers (lower-cased names) and body bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses a response with a `Content-Length` body (what the gateway's error responses use).
    pub fn parse(bytes: &[u8]) -> Self {
        let text_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(bytes)));
        let head = std::str::from_utf8(&bytes[..text_end]).expect("response head is text");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (name, value) = l.split_once(':').expect("header line has a colon");
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Self {
            status,
            headers,
            body: bytes[text_end + 4..].to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
