//! A throwaway certificate authority and server certificate per test, and clients that trust it.
//!
//! The certificates come from `scoregate::demo::make_pki` (rcgen, generated at run time, never
//! committed): a CA and a leaf for `localhost`, `127.0.0.1` and `::1`. They are written as PEM
//! files (`ca.pem`, `server.crt`, `server.key`) into a private temporary directory that lives as
//! long as the last clone of the [`Pki`]. Every client built here trusts only that CA, uses no
//! proxy and pins `localhost` to the address under test, so name resolution plays no part.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A CA, a server certificate it signed, and the directory holding them as PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    inner: Arc<Files>,
}

#[derive(Debug)]
struct Files {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let made = scoregate::demo::make_pki().expect("generate test CA and server certificate");
        let dir = tempfile::tempdir().expect("create PKI temp dir");
        std::fs::write(dir.path().join("ca.pem"), &made.ca_pem).expect("write ca.pem");
        std::fs::write(dir.path().join("server.crt"), &made.cert_pem).expect("write server.crt");
        std::fs::write(dir.path().join("server.key"), &made.key_pem).expect("write server.key");
        Self {
            inner: Arc::new(Files {
                dir,
                ca_pem: made.ca_pem,
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir().join("server.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir().join("server.key")
    }

    pub fn ca_pem(&self) -> &str {
        &self.inner.ca_pem
    }

    /// A reqwest builder trusting only this CA, with `localhost` pinned to `addr`.
    pub fn client_builder(&self, addr: SocketAddr) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).expect("CA as PEM");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve("localhost", addr)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
    }

    /// An HTTP/1.1-only client (ALPN `http/1.1`).
    pub fn http1_client(&self, addr: SocketAddr) -> reqwest::Client {
        self.client_builder(addr)
            .http1_only()
            .build()
            .expect("build HTTP/1.1 client")
    }

    /// An HTTP/2-only client (ALPN `h2`).
    pub fn http2_client(&self, addr: SocketAddr) -> reqwest::Client {
        self.client_builder(addr)
            .http2_prior_knowledge()
            .build()
            .expect("build HTTP/2 client")
    }

    /// A rustls client configuration trusting only this CA, restricted to `versions` and
    /// offering `alpn` (in order).
    pub fn rustls_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem().as_bytes()).expect("CA as DER"))
            .expect("add CA to root store");
        let mut config = ClientConfig::builder_with_provider(scoregate::tls::provider())
            .with_protocol_versions(versions)
            .expect("protocol versions supported by the provider")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Connects to `addr` and completes a verified TLS handshake for `localhost`.
    pub async fn tls_connect(
        &self,
        addr: SocketAddr,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> TlsStream<TcpStream> {
        let connector = TlsConnector::from(self.rustls_config(versions, alpn));
        let tcp = super::within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("TCP connect to the gateway");
        let name = ServerName::try_from("localhost").expect("server name");
        super::within("TLS handshake", connector.connect(name, tcp))
            .await
            .expect("TLS handshake with the gateway")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Both TLS versions the gateway accepts.
pub static MODERN: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
