//! External issuers (e.g. Azure AD) whose tokens a service accepts, and their keys: PEM files,
//! a JWKS file (re-read on change), or a JWKS URL.
//!
//! A JWKS URL is handled so that scoring never depends on the issuer being up:
//! - fetched before the gateway reports ready (`Issuer::is_loaded`);
//! - refreshed in the background (`jwks_refresh_s`, default 10 min);
//! - re-fetched when a token names an unknown `kid`, at most once per [`UNKNOWN_KID_INTERVAL`],
//!   so forged `kid`s cannot hammer the issuer; concurrent requests share one fetch;
//! - a failed fetch keeps the last good key set; failures and the key set's age are metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use prometheus::IntCounter;

use crate::config::{TrustedIssuer, TrustedKeys};
use crate::watch::Fingerprint;

/// Minimum time between fetches caused by unknown `kid`s.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
/// Upper bound on one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

type KeyMap = HashMap<String, Arc<DecodingKey>>;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("fetching {url} failed: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{source_name} is not a usable JWKS: {reason}")]
    Invalid { source_name: String, reason: String },
}

/// One trusted issuer with its current keys.
pub struct Issuer {
    pub config: TrustedIssuer,
    pub validation: Validation,
    keys: ArcSwap<KeyMap>,
    /// Unix seconds of the last successful load (0 = never).
    loaded_at: AtomicU64,
    source: Source,
    /// `scoregate_jwks_fetch_total{result="success"|"error"}` for this issuer, if counted.
    fetches: Option<(IntCounter, IntCounter)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.config.issuer)
            .field("kids", &self.keys.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

enum Source {
    Pem,
    File {
        fingerprint: std::sync::Mutex<Option<Fingerprint>>,
    },
    Url {
        client: Box<Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>>,
        /// Held while fetching, so concurrent unknown-`kid` requests wait for one fetch.
        fetch: tokio::sync::Mutex<FetchState>,
    },
}

#[derive(Default)]
struct FetchState {
    last_unknown_kid_fetch: Option<Instant>,
    last_fetch: Option<Instant>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_jwks(
    bytes: &[u8],
    algorithm: jsonwebtoken::Algorithm,
    source_name: &str,
) -> Result<KeyMap, JwksError> {
    let invalid = |reason: String| JwksError::Invalid {
        source_name: source_name.to_owned(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut map = KeyMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        // A key published for another algorithm must not verify this issuer's tokens.
        if let Some(alg) = jwk.common.key_algorithm
            && alg.to_string() != format!("{algorithm:?}")
        {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            map.insert(kid, Arc::new(key));
        }
    }
    if map.is_empty() {
        return Err(invalid(format!("no usable {algorithm:?} key with a kid")));
    }
    Ok(map)
}

fn read_pem_keys(
    config: &TrustedIssuer,
    keys: &[(String, std::path::PathBuf)],
) -> Result<KeyMap, JwksError> {
    use jsonwebtoken::Algorithm as A;
    let mut map = KeyMap::new();
    for (kid, path) in keys {
        let read = |reason: String| JwksError::Read {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| read(e.to_string()))?;
        let key = match config.algorithm {
            A::ES256 | A::ES384 => DecodingKey::from_ec_pem(&pem),
            A::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(|e| read(e.to_string()))?;
        map.insert(kid.clone(), Arc::new(key));
    }
    Ok(map)
}

impl Issuer {
    /// Sets the issuer up; PEM keys and JWKS files are read now, a JWKS URL by [`Self::refresh`].
    pub fn new(config: TrustedIssuer) -> Result<Self, JwksError> {
        let mut validation = Validation::new(config.algorithm);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let (keys, source) = match &config.keys {
            TrustedKeys::Pem(keys) => (read_pem_keys(&config, keys)?, Source::Pem),
            TrustedKeys::JwksFile(path) => {
                let fingerprint = Fingerprint::of(path);
                let bytes = std::fs::read(path).map_err(|e| JwksError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let keys = parse_jwks(&bytes, config.algorithm, &path.display().to_string())?;
                (
                    keys,
                    Source::File {
                        fingerprint: std::sync::Mutex::new(fingerprint),
                    },
                )
            }
            TrustedKeys::JwksUrl { ca, .. } => {
                let tls =
                    crate::tls::client_config(ca.as_deref()).map_err(|reason| JwksError::Read {
                        path: ca
                            .as_ref()
                            .map_or_else(String::new, |p| p.display().to_string()),
                        reason,
                    })?;
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .build();
                let client = Client::builder(TokioExecutor::new()).build(connector);
                (
                    KeyMap::new(),
                    Source::Url {
                        client: Box::new(client),
                        fetch: tokio::sync::Mutex::new(FetchState::default()),
                    },
                )
            }
        };
        let loaded = if keys.is_empty() { 0 } else { unix_now() };
        Ok(Self {
            config,
            validation,
            keys: ArcSwap::from_pointee(keys),
            loaded_at: AtomicU64::new(loaded),
            source,
            fetches: None,
        })
    }

    /// Counts this issuer's JWKS fetches (scheduled and unknown-`kid` alike) in `family`.
    pub fn count_fetches(&mut self, family: &prometheus::IntCounterVec, service: &str) {
        let label = self.config.issuer.clone();
        self.fetches = Some((
            family.with_label_values(&[service, &label, "success"]),
            family.with_label_values(&[service, &label, "error"]),
        ));
    }

    pub fn find(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.load().get(kid).cloned()
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.load().keys().cloned().collect()
    }

    /// Whether a key set has ever been loaded (readiness waits for JWKS URLs).
    pub fn is_loaded(&self) -> bool {
        self.loaded_at.load(Ordering::Acquire) != 0
    }

    /// Seconds since the key set was last loaded successfully.
    pub fn age_secs(&self) -> Option<u64> {
        match self.loaded_at.load(Ordering::Acquire) {
            0 => None,
            t => Some(unix_now().saturating_sub(t)),
        }
    }

    pub fn is_url(&self) -> bool {
        matches!(self.source, Source::Url { .. })
    }

    /// The refresh period of a JWKS URL.
    pub fn refresh_period(&self) -> Option<Duration> {
        match &self.config.keys {
            TrustedKeys::JwksUrl { refresh, .. } => Some(*refresh),
            TrustedKeys::Pem(_) | TrustedKeys::JwksFile(_) => None,
        }
    }

    /// Whether a scheduled refresh is due (never while a fetch is running).
    pub fn refresh_due(&self) -> bool {
        let (Source::Url { fetch, .. }, Some(period)) = (&self.source, self.refresh_period())
        else {
            return false;
        };
        let Ok(state) = fetch.try_lock() else {
            return false;
        };
        // Not loaded yet: retry every second (the unknown-kid throttle does not apply to this).
        let period = if self.is_loaded() {
            period
        } else {
            Duration::from_secs(1)
        };
        state.last_fetch.is_none_or(|t| t.elapsed() >= period)
    }

    /// Fetches the JWKS URL now (scheduled refresh or prefetch). Keeps the last good keys on
    /// failure.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let Source::Url { client, fetch } = &self.source else {
            return Ok(self.keys.load().len());
        };
        let mut state = fetch.lock().await;
        state.last_fetch = Some(Instant::now());
        self.fetch_into(client).await
    }

    /// Called when a token names a `kid` no key has: re-fetches a JWKS URL at most once per
    /// [`UNKNOWN_KID_INTERVAL`] and reports whether the `kid` is now known.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> Result<bool, JwksError> {
        let Source::Url { client, fetch } = &self.source else {
            return Ok(false);
        };
        let mut state = fetch.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if self.keys.load().contains_key(kid) {
            return Ok(true);
        }
        if state
            .last_unknown_kid_fetch
            .is_some_and(|t| t.elapsed() < UNKNOWN_KID_INTERVAL)
        {
            return Ok(false);
        }
        state.last_unknown_kid_fetch = Some(Instant::now());
        state.last_fetch = Some(Instant::now());
        self.fetch_into(client).await?;
        Ok(self.keys.load().contains_key(kid))
    }

    async fn fetch_into(
        &self,
        client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    ) -> Result<usize, JwksError> {
        let TrustedKeys::JwksUrl { url, .. } = &self.config.keys else {
            return Ok(0);
        };
        let fail = |reason: String| JwksError::Fetch {
            url: url.to_string(),
            reason,
        };
        let fetch = async {
            let resp = client
                .get(url.clone())
                .await
                .map_err(|e| fail(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(fail(format!("status {}", resp.status())));
            }
            Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| fail(e.to_string()))
        };
        let fetched = async {
            let bytes = tokio::time::timeout(FETCH_TIMEOUT, fetch)
                .await
                .map_err(|_| fail(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())))??;
            parse_jwks(&bytes, self.config.algorithm, &url.to_string())
        }
        .await;
        if let Some((success, error)) = &self.fetches {
            if fetched.is_ok() { success } else { error }.inc();
        }
        let keys = fetched?;
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        self.loaded_at.store(unix_now(), Ordering::Release);
        Ok(n)
    }

    /// Re-reads a JWKS file when it changed. `None` when nothing changed or not a file source.
    pub fn poll_file(&self) -> Option<Result<usize, JwksError>> {
        let (Source::File { fingerprint }, TrustedKeys::JwksFile(path)) =
            (&self.source, &self.config.keys)
        else {
            return None;
        };
        let now = Fingerprint::of(path);
        let mut last = fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now == *last {
            return None;
        }
        *last = now;
        let result = std::fs::read(path)
            .map_err(|e| JwksError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
            .and_then(|bytes| {
                parse_jwks(&bytes, self.config.algorithm, &path.display().to_string())
            });
        Some(result.map(|keys| {
            let n = keys.len();
            self.keys.store(Arc::new(keys));
            self.loaded_at.store(unix_now(), Ordering::Release);
            n
        }))
    }
}
