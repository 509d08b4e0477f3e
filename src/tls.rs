//! TLS for the scoring listener: loading a PEM certificate chain and key, and building the rustls
//! server configuration around a certificate resolver (the runtime state's, so certificates
//! change live for new handshakes). The admin listener (`[server.admin_tls]`) gets a
//! configuration of its own around a fixed certificate ([`admin_server_config`]), rebuilt when
//! a reload reads a different pair.
//!
//! Policy: TLS 1.2 and 1.3 only, the crypto provider's default suites (all AEAD with forward
//! secrecy: AES-GCM and ChaCha20-Poly1305 over ECDHE) in the provider's order whatever the
//! client prefers, ALPN `h2` then `http/1.1`, stateless
//! session tickets plus a session cache for cheap resumption. This module knows nothing about HTTP
//! beyond the ALPN names; the handshake timeout lives in `server`.

mod stream;
mod validity;

pub use stream::TlsStream;
pub use validity::not_after;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;

/// Why a certificate/key pair could not be loaded. `Cert*` variants belong to the `cert` setting,
/// `Key*` to the `key` setting, so config errors can name the right field.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    CertRead {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    CertEmpty { path: PathBuf },
    #[error("cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {}: {source}", path.display())]
    KeyRead {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the key in {} cannot be used with the certificate: {source}", path.display())]
    KeyUnusable {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

impl LoadError {
    /// True when the certificate file (rather than the key file) is at fault.
    pub const fn is_cert_problem(&self) -> bool {
        matches!(self, Self::CertRead { .. } | Self::CertEmpty { .. })
    }
}

/// The crypto provider used for every TLS context of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM chain and key and checks that the key matches the leaf certificate.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, LoadError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| LoadError::CertRead {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(LoadError::CertEmpty {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| LoadError::KeyRead {
        path: key.to_owned(),
        source,
    })?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|source| LoadError::KeyUnusable {
        path: key.to_owned(),
        source,
    })
}

/// Builds the server configuration around a resolver. With `client_ca`, every client must
/// present a certificate chaining to one of those CAs (mutual TLS).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's suite order, not the client's: every suite offered is AEAD with forward
    // secrecy, but the provider's order (AES-256-GCM first) is the one the operator reviewed, and
    // scanners (testssl.sh "cipher order") rate a server without one as a finding.
    config.ignore_client_order = true;
    // Stateless tickets let reconnecting clients resume without a full handshake and without
    // server-side state per client; the cache covers TLS 1.2 session ids.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(config)
}

/// Always presents one certificate.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The admin listener's server configuration: the same policy as the scoring listener's, one
/// certificate, HTTP/1.1 only (the admin listener speaks nothing else).
pub fn admin_server_config(
    certified_key: CertifiedKey,
    client_ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = server_config(Arc::new(FixedCert(Arc::new(certified_key))), client_ca)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads CA certificates (PEM) for verifying peers.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A client configuration trusting the system roots plus, optionally, the CA certificates in
/// `extra_ca` (PEM). Used to reach JWKS endpoints and https upstreams.
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // Individual unparsable system certificates are skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA in {}: {e}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn loads_a_matching_pair_and_rejects_a_mismatched_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = write(dir.path(), "a.crt", &a.cert.pem());
        let key_a = write(dir.path(), "a.key", &a.signing_key.serialize_pem());
        let key_b = write(dir.path(), "b.key", &b.signing_key.serialize_pem());

        load_certified_key(&cert, &key_a).expect("matching pair loads");
        let err = load_certified_key(&cert, &key_b).expect_err("mismatch");
        assert!(matches!(err, LoadError::KeyUnusable { .. }), "{err}");
        assert!(!err.is_cert_problem());
    }

    /// An in-memory handshake between `server` and a client offering `suites` in that order;
    /// returns the suite agreed on.
    fn negotiate(
        server: rustls::ServerConfig,
        trusted: CertificateDer<'static>,
        suites: Vec<rustls::SupportedCipherSuite>,
    ) -> rustls::CipherSuite {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted).expect("trust the test certificate");
        let client_provider = CryptoProvider {
            cipher_suites: suites,
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        let mut wire = Vec::new();
        for _ in 0..10 {
            wire.clear();
            while c.wants_write() {
                c.write_tls(&mut wire).expect("client writes");
            }
            s.read_tls(&mut wire.as_slice()).expect("server reads");
            s.process_new_packets().expect("server handshake");
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).expect("server writes");
            }
            c.read_tls(&mut wire.as_slice()).expect("client reads");
            c.process_new_packets().expect("client handshake");
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        s.negotiated_cipher_suite().expect("a suite").suite()
    }

    #[test]
    fn the_server_chooses_the_suite_whatever_the_client_prefers() {
        use rustls::crypto::aws_lc_rs::cipher_suite::{
            TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = write(dir.path(), "a.crt", &a.cert.pem());
        let key = write(dir.path(), "a.key", &a.signing_key.serialize_pem());
        let certified = load_certified_key(&cert, &key).expect("pair");
        let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
        let config = server_config(resolver, None).expect("server config");
        // The client prefers ChaCha20; the server's order puts AES-256-GCM first.
        let agreed = negotiate(
            config,
            a.cert.der().clone(),
            vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_256_GCM_SHA384],
        );
        assert_eq!(agreed, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    #[test]
    fn missing_or_empty_files_name_the_culprit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let key = write(dir.path(), "a.key", &a.signing_key.serialize_pem());
        let empty = write(dir.path(), "empty.crt", "");
        let err = load_certified_key(&dir.path().join("nope.crt"), &key).expect_err("missing");
        assert!(err.is_cert_problem(), "{err}");
        let err = load_certified_key(&empty, &key).expect_err("empty");
        assert!(matches!(err, LoadError::CertEmpty { .. }), "{err}");
        let cert = write(dir.path(), "a.crt", &a.cert.pem());
        let err = load_certified_key(&cert, &cert).expect_err("cert is not a key");
        assert!(matches!(err, LoadError::KeyRead { .. }), "{err}");
    }
}
