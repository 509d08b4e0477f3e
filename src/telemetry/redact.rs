//! Redaction: the only way request URLs and headers reach any log or record.
//!
//! Query parameter values whose names are configured as sensitive become `REDACTED`; headers that
//! carry credentials (`Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `X-Api-Key`,
//! `Ocp-Apim-Subscription-Key`) are shown as `REDACTED`. Matching is case-insensitive. A URL with
//! no query costs nothing.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::HeaderName;

pub const REDACTED: &str = "REDACTED";

/// Query parameters redacted when the configuration does not list its own.
pub const DEFAULT_SENSITIVE_PARAMS: [&str; 10] = [
    "code",
    "token",
    "access_token",
    "id_token",
    "key",
    "api_key",
    "apikey",
    "sig",
    "signature",
    "subscription-key",
];

const SENSITIVE_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "ocp-apim-subscription-key",
];

/// Which query parameters to hide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    params: Vec<String>,
}

impl Default for Redaction {
    fn default() -> Self {
        Self::new(DEFAULT_SENSITIVE_PARAMS.iter().map(ToString::to_string))
    }
}

impl Redaction {
    pub fn new(params: impl IntoIterator<Item = String>) -> Self {
        Self {
            params: params.into_iter().map(|p| p.to_ascii_lowercase()).collect(),
        }
    }

    fn sensitive(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.eq_ignore_ascii_case(name))
    }

    /// `path?a=1&code=xyz` → `path?a=1&code=REDACTED`.
    pub fn url<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        let Some((path, query)) = path_and_query.split_once('?') else {
            return Cow::Borrowed(path_and_query);
        };
        let hit = query
            .split('&')
            .any(|pair| self.sensitive(pair.split_once('=').map_or(pair, |(n, _)| n)));
        if !hit {
            return Cow::Borrowed(path_and_query);
        }
        let mut out = String::with_capacity(path_and_query.len());
        out.push_str(path);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if self.sensitive(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
        Cow::Owned(out)
    }
}

/// Headers as loggable text, credentials replaced by `REDACTED`.
pub fn headers(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(name, value)| {
            let shown = if is_sensitive_header(name) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), shown)
        })
        .collect()
}

fn is_sensitive_header(name: &HeaderName) -> bool {
    SENSITIVE_HEADERS.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_only_sensitive_values() {
        let r = Redaction::default();
        assert!(matches!(r.url("/score"), Cow::Borrowed("/score")));
        assert!(matches!(r.url("/score?a=1&b"), Cow::Borrowed(_)));
        assert_eq!(
            r.url("/s?a=1&Code=xyz&sig=abc&b"),
            "/s?a=1&Code=REDACTED&sig=REDACTED&b"
        );
        let custom = Redaction::new(["session".to_owned()]);
        assert_eq!(
            custom.url("/s?session=1&code=2"),
            "/s?session=REDACTED&code=2"
        );
    }

    #[test]
    fn credential_headers_are_hidden() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().expect("value"));
        h.insert("x-api-key", "secret".parse().expect("value"));
        h.insert("content-type", "application/json".parse().expect("value"));
        let shown = headers(&h);
        assert!(
            shown.iter().all(|(_, v)| !v.contains("secret")),
            "{shown:?}"
        );
        assert!(shown.contains(&("content-type".into(), "application/json".into())));
    }
}
