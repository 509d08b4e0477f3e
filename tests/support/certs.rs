//! Certificate authorities beyond the gateway's own [`super::Pki`]: extra CAs issuing server
//! certificates (for rotation and for TLS upstreams) and client certificates (mutual TLS), TLS
//! clients that trust any set of CAs and may present a client certificate, and atomic ways to
//! replace certificate files the way operators and Kubernetes do.
//!
//! Everything is generated at run time with rcgen; nothing here decides what a test asserts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::within;

/// A certificate authority that can issue server and client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate as PEM (what a trust store or `client_ca` file holds).
    pub pem: String,
    pub der: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf certificate and its private key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate as a peer presents it in a handshake.
    pub cert_der: CertificateDer<'static>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `::1` (every one has a fresh key
    /// and serial number).
    pub fn server_leaf(&self, common_name: &str) -> Leaf {
        self.leaf(
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            common_name,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (extended key usage `clientAuth`).
    pub fn client_leaf(&self, common_name: &str) -> Leaf {
        self.leaf(Vec::new(), common_name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, sans: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }
}

/// A rustls client configuration trusting exactly `cas`, offering `alpn`, optionally presenting
/// `client` as its certificate. Session resumption is off, so every handshake is a full one and
/// shows the certificate the server holds *now*.
pub fn client_config(cas: &[&TestCa], client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_from_ders(
        &cas.iter().map(|ca| ca.der.clone()).collect::<Vec<_>>(),
        client,
        alpn,
    )
}

/// Like [`client_config`], with CA certificates given as DER.
pub fn client_config_from_ders(
    cas: &[CertificateDer<'static>],
    client: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).expect("add CA to root store");
    }
    let builder = ClientConfig::builder_with_provider(scoregate::tls::provider())
        .with_protocol_versions(super::pki::MODERN)
        .expect("protocol versions supported by the provider")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.cert_der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key PEM"),
            )
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The CA certificate in a PEM string, as DER.
pub fn der_of_pem(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

/// Connects to `addr` and runs a TLS handshake for `localhost` with `config`; the error is the
/// handshake's (the caller decides whether a refusal is expected).
pub async fn try_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = within("TCP connect", TcpStream::connect(addr))
        .await
        .expect("TCP connect");
    let name = ServerName::try_from("localhost").expect("server name");
    within(
        "TLS handshake",
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

/// The leaf certificate the server presented on `tls`.
pub fn peer_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// Writes `contents` to `path` atomically: a sibling temporary file renamed over it, so a reader
/// polling the path sees the old file or the new one, never a half-written one.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the target");
}

/// A Kubernetes Secret volume: `dir/tls.crt` and `dir/tls.key` are symlinks into `..data`, itself
/// a symlink to a timestamped directory that is swapped atomically on every update.
#[derive(Debug)]
pub struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    /// Creates the volume in `dir` holding `leaf`.
    pub fn new(dir: &Path, leaf: &Leaf) -> Self {
        std::fs::create_dir_all(dir).expect("create secret volume dir");
        let mut volume = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        volume.update(leaf);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name))
                .expect("symlink a key of the secret");
        }
        volume
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// Writes `leaf` into a fresh timestamped directory and swaps `..data` to it in one rename,
    /// as the kubelet does: both files change together.
    pub fn update(&mut self, leaf: &Leaf) {
        self.generation += 1;
        let version = format!("..gen_{}", self.generation);
        let target = self.dir.join(&version);
        std::fs::create_dir(&target).expect("create secret generation dir");
        std::fs::write(target.join("tls.crt"), &leaf.cert_pem).expect("write tls.crt");
        std::fs::write(target.join("tls.key"), &leaf.key_pem).expect("write tls.key");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }
}
