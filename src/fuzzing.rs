//! What the `cargo fuzz` targets in `fuzz/` call: thin wrappers over the real parsers and checks
//! (no copies of their logic), so a fuzz target exercises exactly the code a request, a reload or
//! `check-config` runs. Not part of the gateway's interface (`#[doc(hidden)]`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};
pub use jsonwebtoken::Algorithm;
use prometheus::IntCounter;

use crate::auth::jwt::cache::TokenCache;
use crate::auth::jwt::signing::{SigningFile, SigningSet};
use crate::auth::jwt::{CacheCounters, TokenAuthority};
use crate::auth::keys::KeySet;
use crate::config::{SigningSource, TokenConfig};
use crate::error::AuthFailure;

pub use crate::auth::KeySlot;
pub use crate::telemetry::redact::Redaction;

/// Where fuzzed text "was read from": relative paths in it resolve below a directory that does
/// not exist, so validation finds no files unless the input names an absolute path.
const NOWHERE: &str = "/nonexistent-scoregate-fuzz/scoregate.toml";

/// `config::parse_and_validate` on TOML text: the issues it reports, or `Ok`.
pub fn config(text: &str) -> Result<(), Vec<String>> {
    crate::config::parse_and_validate(text, Path::new(NOWHERE))
        .map(drop)
        .map_err(|e| e.issues())
}

/// `auth::bearer` over a request carrying these `Authorization` values (values that are not a
/// valid header value are skipped, as hyper would refuse them first).
pub fn bearer(values: &[&[u8]]) -> Result<Vec<u8>, AuthFailure> {
    let mut headers = HeaderMap::new();
    for v in values {
        if let Ok(value) = HeaderValue::from_bytes(v) {
            headers.append(AUTHORIZATION, value);
        }
    }
    crate::auth::bearer(&headers).map(<[u8]>::to_vec)
}

/// `proxy::headers::path_is_safe`: whether a request path is free of dot segments and encoded
/// slashes.
pub fn path_is_safe(path: &str) -> bool {
    crate::proxy::headers::path_is_safe(path)
}

/// The route match `RuntimeState::route` applies to each service: the rest of `path` when
/// `route` is its prefix on a segment boundary.
pub fn route_rest<'p>(route: &str, path: &'p str) -> Option<&'p str> {
    crate::runtime::route_rest(route, path)
}

/// A key file's bytes parsed as `KeyFile::read` does: the key set, or the error's text.
pub fn key_file(bytes: &[u8]) -> Result<ParsedKeys, String> {
    crate::auth::keys::parse_keys(Path::new(NOWHERE), bytes, None)
        .map(|(set, _)| ParsedKeys(set))
        .map_err(|e| e.to_string())
}

/// A key set read from fuzzed bytes.
#[derive(Debug)]
pub struct ParsedKeys(KeySet);

impl ParsedKeys {
    /// `KeySet::verify`: the slot `presented` matches.
    pub fn verify(&self, presented: &[u8]) -> Option<KeySlot> {
        self.0.verify(presented)
    }
}

/// A signing-key state file's bytes (`state_dir/signing/<service>.json`) parsed as
/// `SigningFile::read` does for `algorithm`.
pub fn signing_state(bytes: &[u8], algorithm: Algorithm) -> Result<(), String> {
    crate::auth::jwt::signing::parse_state(Path::new(NOWHERE), bytes, algorithm)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// An operator's signing-key material (PEM, or base64 for HS*) as the signing file loads it.
pub fn signing_material(material: &str, algorithm: Algorithm) -> Result<(), String> {
    crate::auth::jwt::signing::keys_from_material(algorithm, material).map(drop)
}

/// A token-mode service `iris` (issuer `scoregate`, ES256, no leeway) with a freshly generated
/// signing key held in memory, verifying tokens as the proxy does.
#[derive(Debug)]
pub struct TokenFixture {
    authority: TokenAuthority,
    runtime: tokio::runtime::Runtime,
}

impl TokenFixture {
    /// # Panics
    /// When no key can be generated or no runtime started (fuzzing cannot proceed then).
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let config = TokenConfig {
            algorithm: Algorithm::ES256,
            issuer: "scoregate".into(),
            lifetime: Duration::from_secs(3600),
            refresh_after: Duration::from_secs(1800),
            leeway: Duration::ZERO,
            signing: SigningSource::State {
                path: Path::new(NOWHERE).with_file_name("iris.json"),
            },
            subject_header: None,
            cache_entries: 64,
            trusted: Vec::new(),
        };
        let file = SigningFile::new(
            config.signing.clone(),
            config.algorithm,
            TokenAuthority::overlap(&config),
        );
        // Generated in memory; nothing is written.
        let (set, _bytes) = file.generate().expect("generate a signing key");
        let counter = || IntCounter::new("fuzz_token_cache", "unregistered").expect("counter");
        let authority = TokenAuthority::new(
            "iris",
            config,
            Arc::new(set),
            Vec::new(),
            Arc::new(TokenCache::new(64)),
            CacheCounters {
                hit: counter(),
                miss: counter(),
            },
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Self { authority, runtime }
    }

    fn signing(&self) -> &SigningSet {
        &self.authority.signing
    }

    /// The kid of the service's signing key.
    pub fn kid(&self) -> String {
        self.signing()
            .signer()
            .map(|k| k.kid.to_string())
            .unwrap_or_default()
    }

    /// A compact JWS over these exact header and claims bytes, signed with the service's key
    /// (ES256, whatever the header says).
    pub fn sign(&self, header: &[u8], claims: &[u8]) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self
            .signing()
            .signer()
            .and_then(|k| {
                jsonwebtoken::crypto::sign(message.as_bytes(), k.encoding(), Algorithm::ES256).ok()
            })
            .unwrap_or_default();
        format!("{message}.{signature}")
    }

    /// `TokenAuthority::verify`: the verified subject.
    pub fn verify(&self, token: &[u8]) -> Result<Arc<str>, AuthFailure> {
        self.runtime
            .block_on(self.authority.verify(token))
            .map(|t| t.subject)
    }
}

impl Default for TokenFixture {
    fn default() -> Self {
        Self::new()
    }
}
