//! Who is calling: turns a request's credentials into a [`Principal`] for the service it targets,
//! or a typed authentication failure. Builds no responses; `proxy` maps failures through
//! `GatewayError`.
//!
//! Credentials travel as `Authorization: Bearer <credential>` (RFC 6750 §2.1). The scheme is
//! matched case-insensitively (RFC 9110 §11.1); the credential must be visible ASCII with no
//! whitespace, so a key with trailing whitespace (possible over HTTP/2, where values are not
//! trimmed) is refused rather than silently trimmed.

pub mod admin;
pub mod jwt;
pub mod keys;

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::error::AuthFailure;
use jwt::TokenAuthority;
use keys::KeySet;

/// SHA-256 over the concatenation of `parts`: the digest behind key comparison, the token cache
/// key and the admin credential check. The `sha2` crate uses the CPU's SHA
/// extensions; for the one- or few-block inputs here it costs a fraction of a generic EVP call.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Longest bearer credential looked at; anything longer is refused before any work.
pub const MAX_BEARER_LEN: usize = 8 * 1024;

/// How a service checks its callers, with the state that check needs.
#[derive(Debug)]
pub enum ServiceAuth {
    None,
    Key(Arc<KeySet>),
    Token(Arc<TokenAuthority>),
}

impl ServiceAuth {
    /// Authenticates a scoring request. Only token mode ever awaits (an unknown `kid` may wait
    /// for one throttled JWKS re-fetch).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        match self {
            Self::None => Ok(Principal::Anonymous),
            Self::Token(authority) => {
                let presented = bearer(headers).map_err(|f| match f {
                    AuthFailure::Invalid => AuthFailure::TokenMalformed,
                    other => other,
                })?;
                let token = authority.verify(presented).await?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Ok(Principal::Token {
                    past_refresh: token.refresh_after.is_some_and(|r| now >= r),
                    refresh_after: token.refresh_after,
                    subject: token.subject,
                })
            }
            Self::Key(set) => {
                let presented = bearer(headers).map_err(|f| match f {
                    AuthFailure::TokenTooLarge => AuthFailure::Invalid,
                    other => other,
                })?;
                if presented.len() > keys::MAX_KEY_LEN {
                    return Err(AuthFailure::Invalid);
                }
                set.verify(presented)
                    .map(Principal::Key)
                    .ok_or(AuthFailure::Invalid)
            }
        }
    }
}

/// Extracts the bearer credential. Missing header, several headers, or another scheme is
/// `Missing`; a malformed bearer value is `Invalid`.
pub fn bearer(headers: &HeaderMap) -> Result<&[u8], AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Invalid);
    }
    let bytes = value.as_bytes();
    if bytes.len() > MAX_BEARER_LEN + 16 {
        // Refused before looking at it; key mode reports this as an invalid key.
        return Err(AuthFailure::TokenTooLarge);
    }
    let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
        Some(i) => bytes.split_at(i),
        None => return Err(AuthFailure::Missing),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthFailure::Missing);
    }
    // RFC 7235 allows one or more spaces between scheme and credential.
    let credential = &rest[rest.iter().take_while(|&&b| b == b' ').count()..];
    if credential.is_empty() || !credential.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(AuthFailure::Invalid);
    }
    Ok(credential)
}

/// The authenticated caller of a scoring request. Never holds a credential, only what records and
/// metrics may show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Principal {
    /// The service does not authenticate (`auth = "none"`), or authentication has not run.
    #[default]
    Anonymous,
    /// A key-mode caller, identified by the key slot that matched.
    Key(KeySlot),
    /// A token-mode caller, identified by the token's subject.
    Token {
        subject: Arc<str>,
        /// When the client should fetch a new token (unix seconds), if known.
        refresh_after: Option<u64>,
        /// The token was used after its `refreshAfter` point.
        past_refresh: bool,
    },
}

impl Principal {
    /// The value of the record's `Principal` field (shared, no copy).
    pub fn record_name(&self) -> Option<RecordName> {
        match self {
            Self::Anonymous => None,
            Self::Key(slot) => Some(RecordName::Static(slot.as_str())),
            Self::Token { subject, .. } => Some(RecordName::Shared(Arc::clone(subject))),
        }
    }
}

/// A principal's name as recorded: a fixed slot name or a shared subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordName {
    Static(&'static str),
    Shared(Arc<str>),
}

impl serde::Serialize for RecordName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Self::Static(n) => n,
            Self::Shared(n) => n,
        })
    }
}

/// The two key slots of a key-mode service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySlot {
    Primary,
    Secondary,
}

impl KeySlot {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).expect("value"));
        }
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&headers(&[b"Bearer abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&headers(&[b"bearer abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&headers(&[b"BEARER   abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&HeaderMap::new()), Err(AuthFailure::Missing));
        assert_eq!(
            bearer(&headers(&[b"Basic YWJjOmRlZg=="])),
            Err(AuthFailure::Missing)
        );
        assert_eq!(bearer(&headers(&[b"Bearer"])), Err(AuthFailure::Missing));
        assert_eq!(bearer(&headers(&[b"Bearer "])), Err(AuthFailure::Invalid));
        assert_eq!(
            bearer(&headers(&[b"Bearer abc "])),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            bearer(&headers(&[b"Bearer ab c"])),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            bearer(&headers(&[b"Bearer a\tb"])),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            bearer(&headers(&[b"Bearer a", b"Bearer b"])),
            Err(AuthFailure::Invalid)
        );
        let long = [b"Bearer ".as_slice(), &vec![b'a'; 10 * 1024]].concat();
        assert_eq!(bearer(&headers(&[&long])), Err(AuthFailure::TokenTooLarge));
    }
}
