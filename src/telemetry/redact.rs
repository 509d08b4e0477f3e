//! Redaction: the only way request URLs and headers reach any log or record.
//!
//! Query parameter values whose names are configured as sensitive become `REDACTED`; headers that
//! carry credentials (`Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `X-Api-Key`,
//! `Ocp-Apim-Subscription-Key`) are shown as `REDACTED`. A URL with no query costs nothing.
//!
//! A parameter name is compared the way the application behind the gateway may read it, so a
//! spelling the application understands cannot slip a secret into the log: `&` and `;` both
//! separate parameters (many frameworks accept either), the name is percent-decoded (`+` is a
//! space; up to three rounds, for double encoding), control characters such as NUL are dropped,
//! surrounding spaces trimmed, a bracket suffix (`token[]`, `token[0]`) ignored, and case
//! ignored. Normalizing can only make more names match, never fewer.

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
            params: params
                .into_iter()
                .map(|p| normalize_name(&p).into_owned())
                .collect(),
        }
    }

    fn sensitive(&self, raw_name: &str) -> bool {
        let name = normalize_name(raw_name);
        self.params.iter().any(|p| *p == name)
    }

    /// `path?a=1&code=xyz;sig=abc` → `path?a=1&code=REDACTED;sig=REDACTED`: separators and
    /// names are kept as sent, sensitive values replaced.
    pub fn url<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        let Some((path, query)) = path_and_query.split_once('?') else {
            return Cow::Borrowed(path_and_query);
        };
        let hit = query
            .split(SEPARATORS)
            .any(|pair| pair.split_once('=').is_some_and(|(n, _)| self.sensitive(n)));
        if !hit {
            return Cow::Borrowed(path_and_query);
        }
        let mut out = String::with_capacity(path_and_query.len());
        out.push_str(path);
        out.push('?');
        for piece in query.split_inclusive(SEPARATORS) {
            let (pair, separator) = match piece.strip_suffix(SEPARATORS) {
                Some(pair) => (pair, &piece[pair.len()..]),
                None => (piece, ""),
            };
            match pair.split_once('=') {
                Some((name, _)) if self.sensitive(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
            out.push_str(separator);
        }
        Cow::Owned(out)
    }
}

/// What separates query parameters: `&`, and `;` (HTML 4's recommendation, still honoured by
/// many servers).
const SEPARATORS: [char; 2] = ['&', ';'];

/// A parameter name as an application would read it (see the module header), lower-cased.
fn normalize_name(raw: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.';
    if raw.bytes().all(|b| plain(b) && !b.is_ascii_uppercase()) {
        return Cow::Borrowed(raw);
    }
    let mut bytes = raw.as_bytes().to_vec();
    for b in &mut bytes {
        if *b == b'+' {
            *b = b' ';
        }
    }
    for _ in 0..3 {
        match percent_decode(&bytes) {
            Some(decoded) => bytes = decoded,
            None => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let kept: String = text.chars().filter(|c| !c.is_control()).collect();
    let name = kept.split('[').next().unwrap_or_default().trim();
    Cow::Owned(name.to_lowercase())
}

/// One round of percent-decoding; `None` when there is no valid escape to decode. Invalid
/// escapes stay as they are.
fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        if let Some((hi, lo)) = escape {
            out.push(hi << 4 | lo);
            changed = true;
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    changed.then_some(out)
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

    /// Spellings an application reads as a sensitive name are redacted (issue 15 item 10).
    #[test]
    fn names_are_matched_as_applications_read_them() {
        let r = Redaction::default();
        for (sent, shown) in [
            ("/s?%63ode=x", "/s?%63ode=REDACTED"),
            ("/s?%43%4F%44%45=x", "/s?%43%4F%44%45=REDACTED"),
            ("/s?%2563ode=x", "/s?%2563ode=REDACTED"),
            ("/s?a=1;token=x", "/s?a=1;token=REDACTED"),
            ("/s?token=x;a=1&sig=y", "/s?token=REDACTED;a=1&sig=REDACTED"),
            ("/s?token%00=x", "/s?token%00=REDACTED"),
            ("/s?access_token[]=x", "/s?access_token[]=REDACTED"),
            (
                "/s?access_token%5B0%5D=x",
                "/s?access_token%5B0%5D=REDACTED",
            ),
            ("/s?+token+=x", "/s?+token+=REDACTED"),
            ("/s?%20Key%09=x", "/s?%20Key%09=REDACTED"),
            ("/s?subscription-key=x", "/s?subscription-key=REDACTED"),
        ] {
            assert_eq!(r.url(sent), shown, "{sent}");
        }
        // Nothing sensitive: borrowed, unchanged, whatever the encoding.
        for sent in [
            "/s?codex=1",
            "/s?%63odex=1",
            "/s?%zz=1;a=2",
            "/s?cod%=1",
            "/s?x=code;y=token",
            "/s?token",
            "/s?%",
        ] {
            assert!(matches!(r.url(sent), Cow::Borrowed(_)), "{sent}");
        }
        // Configured names are normalized the same way.
        let custom = Redaction::new(["Session[]".to_owned()]);
        assert_eq!(custom.url("/s?%73ession=1"), "/s?%73ession=REDACTED");
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode(b"a%41b"), Some(b"aAb".to_vec()));
        assert_eq!(percent_decode(b"%4"), None);
        assert_eq!(percent_decode(b"%g1%41"), Some(b"%g1A".to_vec()));
        assert_eq!(percent_decode(b"%ff"), Some(vec![0xff]));
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
