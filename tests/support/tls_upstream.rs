//! Upstreams the plain [`super::MockUpstream`] cannot imitate.
//!
//! - [`TlsFront`]: terminates TLS with a certificate from a test CA and pipes every connection to
//!   a backend (usually a `MockUpstream`), so an `https://` upstream behaves exactly like the
//!   mock, paths and records included.
//! - [`StallingUpstream`]: answers every proxied request with a response head and the first part
//!   of its body, then goes silent with the connection open (health probes, `GET /`, get a
//!   normal `200 Healthy`).
//!
//! Both bind `127.0.0.1:0` and stop serving when dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::certs::Leaf;

/// See the module documentation.
#[derive(Debug)]
pub struct TlsFront {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TlsFront {
    /// Serves TLS with `leaf` on `127.0.0.1:0`, forwarding the decrypted bytes to `backend`.
    pub async fn start(leaf: &Leaf, backend: SocketAddr) -> Self {
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("leaf key PEM");
        let chain: Vec<CertificateDer<'static>> = vec![leaf.cert_der.clone()];
        let mut config = rustls::ServerConfig::builder_with_provider(scoregate::tls::provider())
            .with_protocol_versions(super::pki::MODERN)
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("TLS front certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS front");
        let addr = listener.local_addr().expect("TLS front address");
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let (acceptor, token) = (acceptor.clone(), token.clone());
                tokio::spawn(async move {
                    let pipe = async {
                        // A refused handshake (e.g. a client not trusting this CA) just ends.
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let Ok(mut back) = TcpStream::connect(backend).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                    };
                    tokio::select! {
                        () = pipe => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT`, the form a `[[service]] upstream` takes.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct StallingUpstream {
    addr: SocketAddr,
    stop: CancellationToken,
    stalled: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

impl Drop for StallingUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl StallingUpstream {
    /// Every proxied request gets `200` with `Content-Length: declared` and only `sent` bytes.
    pub async fn start(declared: usize, sent: usize) -> Self {
        assert!(sent < declared, "the body must stop short of its length");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stalling upstream");
        let addr = listener.local_addr().expect("stalling upstream address");
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let (token, tx) = (token.clone(), tx.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve_stalling(tcp, declared, sent, tx) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            stop,
            stalled: tokio::sync::Mutex::new(rx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until a proxied request has been answered with its partial body (and the upstream
    /// has gone silent).
    pub async fn wait_stalled(&self) {
        let mut rx = self.stalled.lock().await;
        super::within("the upstream to send its partial body", rx.recv())
            .await
            .expect("stalling upstream still running");
    }
}

async fn serve_stalling(
    mut tcp: TcpStream,
    declared: usize,
    sent: usize,
    tx: mpsc::UnboundedSender<()>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.starts_with(b"GET / ") {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nHealthy")
            .await;
        return;
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {declared}\r\n\r\n"
    );
    if tcp.write_all(response.as_bytes()).await.is_err()
        || tcp.write_all(&vec![b'x'; sent]).await.is_err()
        || tcp.flush().await.is_err()
    {
        return;
    }
    let _ = tx.send(());
    // Silent from here on, with the connection open; the read ends when the gateway gives up.
    let _ = tcp.read(&mut buf).await;
}
