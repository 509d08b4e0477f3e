//! Token mode: issuing short-lived JWTs and verifying them locally.
//!
//! [`TokenAuthority`] is one service's token policy. Issuing signs with the service's current
//! signing key (`signing`) and returns Azure ML's `{accessToken, tokenType, expiryOn,
//! refreshAfter}`. Verifying, in order, refuses as early and cheaply as possible:
//! 1. over 8 KiB → refused before any parsing;
//! 2. cache hit (SHA-256 of the token) → only `exp`/`nbf` are re-checked against the clock;
//! 3. the header must parse and name a `kid`;
//! 4. the `kid` selects the key — the service's own signing keys, or a trusted issuer's — and with
//!    it the only algorithm accepted, the issuer and the audience (the token's `alg` must equal
//!    the key's configured algorithm, so `none` and HS/RS confusion cannot pass);
//! 5. an unknown `kid` may trigger one throttled JWKS re-fetch (`trusted`);
//! 6. signature, `exp`/`nbf` with leeway, `iss`, `aud`, `sub` (jsonwebtoken), then the cache.

pub mod cache;
pub mod signing;
pub mod trusted;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use crate::config::TokenConfig;
use crate::error::AuthFailure;
use cache::{CachedToken, TokenCache};
use signing::SigningSet;
use trusted::IssuerKeys;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: Arc<str>,
    pub exp: u64,
    /// When the client should fetch a new token (own tokens carry it; for external tokens it is
    /// the midpoint of their lifetime when `iat` is present).
    pub refresh_after: Option<u64>,
}

/// What `POST /services/{name}/token` returns (AZUREML-CONTRACT A1).
#[derive(Debug, Serialize)]
pub struct IssuedToken {
    #[serde(rename = "accessToken")]
    pub access_token: String,
    #[serde(rename = "tokenType")]
    pub token_type: &'static str,
    #[serde(rename = "expiryOn")]
    pub expiry_on: u64,
    #[serde(rename = "refreshAfter")]
    pub refresh_after: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OwnClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    /// Refresh-after, unix seconds (scoregate's own claim).
    rfa: u64,
}

/// The claims read from any accepted token (issuer and audience are checked by `Validation`).
#[derive(Debug, Deserialize)]
struct Claims {
    // Optional here so a missing claim reaches jsonwebtoken's required-claims check (and is
    // reported as a claims problem) instead of failing deserialization as "malformed".
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    rfa: Option<u64>,
}

/// The token-cache counters of a service (`scoregate_token_cache_total{result}`), handed in by
/// whoever builds the authority so this module depends on no metrics type.
#[derive(Debug, Clone)]
pub struct CacheCounters {
    pub hit: IntCounter,
    pub miss: IntCounter,
}

/// One token-mode service's policy with its keys as of one state version: the service's own
/// signing keys and its trusted issuers' keys. Immutable; a new signing key or key set builds a
/// new authority that shares the cache.
#[derive(Debug)]
pub struct TokenAuthority {
    service: Arc<str>,
    pub config: TokenConfig,
    pub signing: Arc<SigningSet>,
    own_validation: Validation,
    pub trusted: Vec<IssuerKeys>,
    pub cache: Arc<TokenCache>,
    counters: CacheCounters,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenAuthority {
    pub fn new(
        service: &str,
        config: TokenConfig,
        signing: Arc<SigningSet>,
        trusted: Vec<IssuerKeys>,
        cache: Arc<TokenCache>,
        counters: CacheCounters,
    ) -> Self {
        let mut own_validation = Validation::new(config.algorithm);
        own_validation.set_issuer(&[&config.issuer]);
        own_validation.set_audience(&[service]);
        own_validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        own_validation.leeway = config.leeway.as_secs();
        own_validation.validate_nbf = true;
        Self {
            service: Arc::from(service),
            cache,
            config,
            signing,
            own_validation,
            trusted,
            counters,
        }
    }

    /// How long a replaced signing key keeps verifying: token lifetime plus leeway.
    pub fn overlap(config: &TokenConfig) -> std::time::Duration {
        config.lifetime + config.leeway
    }

    /// Signs a token for `subject`.
    pub fn issue(&self, subject: &str) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let signer = self
            .signing
            .signer()
            .ok_or_else(|| jsonwebtoken::errors::Error::from(ErrorKind::InvalidKeyFormat))?;
        let now = unix_now();
        let exp = now + self.config.lifetime.as_secs();
        let rfa = now + self.config.refresh_after.as_secs();
        let mut header = Header::new(self.config.algorithm);
        header.kid = Some(signer.kid.to_string());
        let claims = OwnClaims {
            iss: &self.config.issuer,
            aud: &self.service,
            sub: subject,
            iat: now,
            nbf: now,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
            rfa,
        };
        let token = jsonwebtoken::encode(&header, &claims, signer.encoding())?;
        Ok(IssuedToken {
            access_token: token,
            token_type: "Bearer",
            expiry_on: exp,
            refresh_after: rfa,
        })
    }

    /// Verifies a bearer token (see the module docs for the order of checks).
    pub async fn verify(&self, token: &[u8]) -> Result<VerifiedToken, AuthFailure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::TokenTooLarge);
        }
        let key = crate::auth::sha256(&[token]);
        let now = unix_now();
        let leeway = self.config.leeway.as_secs();
        if let Some(hit) = self.cache.get(&key) {
            self.counters.hit.inc();
            if hit.exp.saturating_add(leeway) < now {
                self.cache.remove(&key);
                return Err(AuthFailure::TokenExpired);
            }
            if hit.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
                return Err(AuthFailure::TokenNotYetValid);
            }
            // The key that vouched for this token may have been withdrawn since (a JWKS
            // refresh, a replaced signing key file, a retired key): then so is the token.
            if !self.key_still_trusted(hit.issuer, &hit.kid, now) {
                self.cache.remove(&key);
                return Err(AuthFailure::TokenUnknownKey);
            }
            return Ok(VerifiedToken {
                subject: hit.subject,
                exp: hit.exp,
                refresh_after: hit.refresh_after,
            });
        }
        self.counters.miss.inc();
        // Boxed: a miss is rare next to hits, and its future (key lookup, perhaps a JWKS fetch)
        // is large; unboxed, every token-mode request's future would carry room for it.
        Box::pin(self.verify_uncached(token, key, now)).await
    }

    /// [`Self::verify`] for a token that is not in the cache.
    async fn verify_uncached(
        &self,
        token: &[u8],
        key: [u8; 32],
        now: u64,
    ) -> Result<VerifiedToken, AuthFailure> {
        let text = std::str::from_utf8(token).map_err(|_| AuthFailure::TokenMalformed)?;
        let header = jsonwebtoken::decode_header(text).map_err(|_| AuthFailure::TokenMalformed)?;
        let kid = header.kid.as_deref().ok_or(AuthFailure::TokenMalformed)?;
        let (decoding, validation, kid, issuer, in_state) = self.key_for(text, kid).await?;
        // The token's own `alg` is only ever compared with the key's configured one.
        if header.alg != *validation.algorithms.first().unwrap_or(&Algorithm::ES256) {
            return Err(AuthFailure::TokenAlgorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(text, &decoding, validation)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(AuthFailure::TokenClaims);
        };
        // The subject is sent upstream as a header value: one that cannot be (control
        // characters, CR/LF) is refused, not forwarded without a subject.
        if sub.is_empty() || sub.len() > 256 || http::HeaderValue::from_str(&sub).is_err() {
            return Err(AuthFailure::TokenClaims);
        }
        let refresh_after = claims.rfa.or_else(|| {
            claims
                .iat
                .filter(|iat| *iat < exp)
                .map(|iat| iat + (exp - iat) / 2)
        });
        let subject: Arc<str> = Arc::from(sub);
        // A key fetched just now is not in this state version yet, so a cache hit could not
        // re-check it; such a token is cached from the next state on.
        if in_state {
            self.cache.insert(
                key,
                CachedToken {
                    subject: Arc::clone(&subject),
                    exp,
                    nbf: claims.nbf,
                    refresh_after,
                    kid,
                    issuer,
                },
                now,
            );
        }
        Ok(VerifiedToken {
            subject,
            exp,
            refresh_after,
        })
    }

    /// Whether the key a cached token was verified with still verifies.
    fn key_still_trusted(&self, issuer: Option<usize>, kid: &str, now: u64) -> bool {
        match issuer {
            None => self.signing.find(kid, now).is_some(),
            Some(i) => self.trusted.get(i).is_some_and(|t| t.find(kid).is_some()),
        }
    }

    /// The key, validation rules, kid and owner (`None`: own signing key, else the trusted
    /// issuer's index) for a token's `kid`, and whether the key is in this state version (not
    /// fetched just now).
    async fn key_for(&self, token: &str, kid: &str) -> Result<KeyChoice<'_>, AuthFailure> {
        let now = unix_now();
        if let Some(k) = self.signing.find(kid, now) {
            return Ok((
                Arc::clone(&k.decoding),
                &self.own_validation,
                Arc::clone(&k.kid),
                None,
                true,
            ));
        }
        for (i, trusted) in self.trusted.iter().enumerate() {
            if let Some(k) = trusted.find(kid) {
                return Ok((k, &trusted.issuer.validation, Arc::from(kid), Some(i), true));
            }
        }
        // Unknown everywhere: a JWKS issuer may have rotated. Only the issuer the (unverified)
        // token names is asked, and each at most once per throttle interval.
        let claimed_iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssOnly>(token)
            .ok()
            .and_then(|c| c.iss);
        for (i, trusted) in self.trusted.iter().enumerate() {
            let issuer = &trusted.issuer;
            if !issuer.is_url() || claimed_iss.as_deref() != Some(issuer.config.issuer.as_str()) {
                continue;
            }
            match trusted.find_or_fetch(kid).await {
                Ok(Some(k)) => return Ok((k, &issuer.validation, Arc::from(kid), Some(i), false)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(service = %self.service, error = %e, "JWKS re-fetch for an unknown kid failed");
                }
            }
        }
        Err(AuthFailure::TokenUnknownKey)
    }

    /// Whether every JWKS URL has been fetched at least once (readiness).
    pub fn keys_loaded(&self) -> bool {
        self.trusted.iter().all(IssuerKeys::is_loaded)
    }

    /// The kids that may still verify at `now`: the cache keeps only entries they vouched for.
    pub fn live_kids(&self, now: u64) -> Vec<Arc<str>> {
        let mut kids = self.signing.active_kids(now);
        for trusted in &self.trusted {
            kids.extend(trusted.kids().map(|k| Arc::from(k.as_str())));
        }
        kids
    }
}

/// A verifying key with its rules, kid and owner (see [`TokenAuthority::key_for`]).
type KeyChoice<'a> = (
    Arc<DecodingKey>,
    &'a Validation,
    Arc<str>,
    Option<usize>,
    bool,
);

#[derive(Debug, Deserialize)]
struct IssOnly {
    iss: Option<String>,
}

/// Maps jsonwebtoken's validation failures to the refusal reasons clients see.
pub fn map_error(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::InvalidSignature => AuthFailure::TokenSignature,
        ErrorKind::ExpiredSignature => AuthFailure::TokenExpired,
        ErrorKind::ImmatureSignature => AuthFailure::TokenNotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::TokenIssuer,
        ErrorKind::InvalidAudience => AuthFailure::TokenAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthFailure::TokenAlgorithm,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => AuthFailure::TokenClaims,
        _ => AuthFailure::TokenMalformed,
    }
}

#[cfg(test)]
mod tests;
