//! External issuers (e.g. Azure AD) whose tokens a service accepts, and their keys: PEM files,
//! a JWKS file (re-read on change), or a JWKS URL.
//!
//! An [`Issuer`] is the long-lived part of a trusted issuer: its validation rules, and for a JWKS
//! URL the HTTP client, the fetch throttle and when the keys were last loaded. Its keys
//! ([`IssuerKeys`]) are part of the runtime state: a JWKS file is a watched source, and every
//! fetched JWKS document is handed to the state's builder through the channel given to
//! [`Issuer::new`], so a fetched key set is published like any other change.
//!
//! A JWKS URL is handled so that scoring never depends on the issuer being up:
//! - fetched before the gateway reports ready (the state holds a key set for it);
//! - refreshed in the background (`jwks_refresh_s`, default 10 min);
//! - re-fetched when a token names an unknown `kid`, at most once per [`UNKNOWN_KID_INTERVAL`],
//!   so forged `kid`s cannot hammer the issuer; concurrent requests share one fetch, and the
//!   request that asked verifies with the fetched keys at once;
//! - a failed fetch keeps the last good key set; failures and the key set's age are metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use prometheus::IntCounter;

use crate::config::{TrustedIssuer, TrustedKeys};
use crate::source::{Fingerprint, Source, Version};

/// Minimum time between fetches caused by unknown `kid`s.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
/// Upper bound on one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Verifying keys by `kid`.
pub type KeyMap = HashMap<String, Arc<DecodingKey>>;

/// Names one trusted issuer of the configuration: a service name (or `@identity` for the
/// identity provider, a name no service can have), and its position in that list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId {
    pub owner: String,
    pub index: usize,
}

impl IssuerId {
    /// The `[identity]` provider's issuer.
    pub fn identity() -> Self {
        Self {
            owner: "@identity".to_owned(),
            index: 0,
        }
    }
}

/// A fetched key set on its way to the state's builder.
#[derive(Debug)]
pub struct Fetched {
    pub id: IssuerId,
    pub keys: Arc<KeyMap>,
}

/// Where fetched key sets go (the reload loop applies them).
pub type FetchedTx = tokio::sync::mpsc::UnboundedSender<Fetched>;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("fetching {url} failed: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{source_name} is not a usable JWKS: {reason}")]
    Invalid { source_name: String, reason: String },
}

/// One trusted issuer's long-lived parts (see the module docs).
pub struct Issuer {
    pub id: IssuerId,
    pub config: TrustedIssuer,
    pub validation: Validation,
    /// Unix seconds of the last successful load (0 = never).
    loaded_at: AtomicU64,
    url: Option<UrlSource>,
    /// `scoregate_jwks_fetch_total{result="success"|"error"}` for this issuer, if counted.
    fetches: Option<(IntCounter, IntCounter)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("id", &self.id)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

struct UrlSource {
    client: Box<Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>>,
    /// Held while fetching, so concurrent unknown-`kid` requests wait for one fetch.
    fetch: tokio::sync::Mutex<FetchState>,
    fetched: FetchedTx,
}

#[derive(Default)]
struct FetchState {
    last_unknown_kid_fetch: Option<Instant>,
    last_fetch: Option<Instant>,
    /// The last key set this issuer fetched: requests that waited for a fetch find it here
    /// before the new state is published.
    last: Option<Arc<KeyMap>>,
}

/// A trusted issuer with its keys in one state version.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub issuer: Arc<Issuer>,
    pub keys: Arc<KeyMap>,
}

impl IssuerKeys {
    pub fn find(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.get(kid).cloned()
    }

    pub fn kids(&self) -> impl Iterator<Item = &String> {
        self.keys.keys()
    }

    /// Whether a key set has been loaded (readiness waits for JWKS URLs).
    pub fn is_loaded(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Finds `kid`, re-fetching a JWKS URL (throttled) when it is unknown.
    pub async fn find_or_fetch(&self, kid: &str) -> Result<Option<Arc<DecodingKey>>, JwksError> {
        if let Some(k) = self.find(kid) {
            return Ok(Some(k));
        }
        Ok(self
            .issuer
            .refetch_for_unknown_kid(kid)
            .await?
            .and_then(|keys| keys.get(kid).cloned()))
    }
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
    /// Sets the issuer up. Its keys come separately ([`Self::initial_keys`], a [`JwksFile`]
    /// source, or fetches that go to `fetched`).
    pub fn new(id: IssuerId, config: TrustedIssuer, fetched: FetchedTx) -> Result<Self, JwksError> {
        let mut validation = Validation::new(config.algorithm);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let url = match &config.keys {
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
                Some(UrlSource {
                    client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
                    fetch: tokio::sync::Mutex::new(FetchState::default()),
                    fetched,
                })
            }
            TrustedKeys::Pem(_) | TrustedKeys::JwksFile(_) => None,
        };
        Ok(Self {
            id,
            config,
            validation,
            loaded_at: AtomicU64::new(0),
            url,
            fetches: None,
        })
    }

    /// The keys known without fetching: PEM files are read now; a JWKS URL starts empty (not
    /// ready until fetched). A JWKS file is a source of its own ([`JwksFile`]).
    pub fn initial_keys(&self) -> Result<KeyMap, JwksError> {
        match &self.config.keys {
            TrustedKeys::Pem(keys) => {
                let map = read_pem_keys(&self.config, keys)?;
                self.mark_loaded();
                Ok(map)
            }
            TrustedKeys::JwksFile(_) | TrustedKeys::JwksUrl { .. } => Ok(KeyMap::new()),
        }
    }

    /// Counts this issuer's JWKS fetches (scheduled and unknown-`kid` alike).
    pub fn count_fetches(&mut self, success: IntCounter, error: IntCounter) {
        self.fetches = Some((success, error));
    }

    /// Records that a key set was loaded now (for the age gauge).
    pub fn mark_loaded(&self) {
        self.loaded_at.store(unix_now(), Ordering::Release);
    }

    /// Seconds since the key set was last loaded successfully.
    pub fn age_secs(&self) -> Option<u64> {
        match self.loaded_at.load(Ordering::Acquire) {
            0 => None,
            t => Some(unix_now().saturating_sub(t)),
        }
    }

    pub fn is_url(&self) -> bool {
        self.url.is_some()
    }

    /// The refresh period of a JWKS URL.
    pub fn refresh_period(&self) -> Option<Duration> {
        match &self.config.keys {
            TrustedKeys::JwksUrl { refresh, .. } => Some(*refresh),
            TrustedKeys::Pem(_) | TrustedKeys::JwksFile(_) => None,
        }
    }

    /// Whether a scheduled refresh is due (never while a fetch is running). `loaded`: the state
    /// holds a key set for this issuer.
    pub fn refresh_due(&self, loaded: bool) -> bool {
        let (Some(url), Some(period)) = (&self.url, self.refresh_period()) else {
            return false;
        };
        let Ok(state) = url.fetch.try_lock() else {
            return false;
        };
        // Not loaded yet: retry every second (the unknown-kid throttle does not apply to this).
        let period = if loaded {
            period
        } else {
            Duration::from_secs(1)
        };
        state.last_fetch.is_none_or(|t| t.elapsed() >= period)
    }

    /// Fetches the JWKS URL now (scheduled refresh or prefetch). The new key set goes to the
    /// state's builder; on failure the last good keys stay.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let Some(url) = &self.url else {
            return Ok(0);
        };
        let mut state = url.fetch.lock().await;
        state.last_fetch = Some(Instant::now());
        let keys = self.fetch(url).await?;
        let n = keys.len();
        state.last = Some(keys);
        Ok(n)
    }

    /// Called when a token names a `kid` no key has: re-fetches a JWKS URL at most once per
    /// [`UNKNOWN_KID_INTERVAL`] and returns the fetched key set (`None`: nothing was fetched).
    pub async fn refetch_for_unknown_kid(
        &self,
        kid: &str,
    ) -> Result<Option<Arc<KeyMap>>, JwksError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut state = url.fetch.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(last) = state.last.as_ref().filter(|l| l.contains_key(kid)) {
            return Ok(Some(Arc::clone(last)));
        }
        if state
            .last_unknown_kid_fetch
            .is_some_and(|t| t.elapsed() < UNKNOWN_KID_INTERVAL)
        {
            return Ok(None);
        }
        state.last_unknown_kid_fetch = Some(Instant::now());
        state.last_fetch = Some(Instant::now());
        let keys = self.fetch(url).await?;
        state.last = Some(Arc::clone(&keys));
        Ok(Some(keys))
    }

    async fn fetch(&self, source: &UrlSource) -> Result<Arc<KeyMap>, JwksError> {
        let TrustedKeys::JwksUrl { url, .. } = &self.config.keys else {
            return Ok(Arc::default());
        };
        let fail = |reason: String| JwksError::Fetch {
            url: url.to_string(),
            reason,
        };
        let fetch = async {
            let resp = source
                .client
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
        let keys = Arc::new(fetched?);
        self.mark_loaded();
        // The receiver is the reload loop; if it is gone the gateway is stopping.
        let _ = source.fetched.send(Fetched {
            id: self.id.clone(),
            keys: Arc::clone(&keys),
        });
        Ok(keys)
    }
}

/// A JWKS document on disk: a source of one issuer's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksFile {
    pub path: PathBuf,
    pub algorithm: jsonwebtoken::Algorithm,
}

impl Source for JwksFile {
    type Value = KeyMap;
    type Error = JwksError;

    fn observe(&self) -> Version {
        vec![Fingerprint::of(&self.path)]
    }

    fn load(&self, _previous: Option<&KeyMap>) -> Result<KeyMap, JwksError> {
        let bytes = std::fs::read(&self.path).map_err(|e| JwksError::Read {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        parse_jwks(&bytes, self.algorithm, &self.path.display().to_string())
    }
}
