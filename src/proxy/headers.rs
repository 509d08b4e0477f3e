//! Header rewriting between client and upstream: hop-by-hop removal, forwarding headers and
//! request ids. Pure functions over `HeaderMap`, unit-tested below.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_MS_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
pub static X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_TOKEN_REFRESH_AFTER: HeaderName = HeaderName::from_static("x-token-refresh-after");
/// The default name of the verified-subject header the gateway sends upstream.
pub static X_SCOREGATE_SUBJECT: HeaderName = HeaderName::from_static("x-scoregate-subject");

/// Hop-by-hop headers per RFC 9110 §7.6.1, plus the de-facto `Keep-Alive` and
/// `Proxy-Connection`. They describe one connection and must not be forwarded.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: a match on the name's text, which for most names
/// ends at the length comparisons, where comparing `HeaderName`s tries all nine in turn.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, including every header named in `Connection`
/// (RFC 9110 §7.6.1: "a proxy MUST ... remove any header fields nominated by the Connection
/// header field").
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names saves nine hashed removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in nominated {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Removes every header that a server could take for `name`: the same name once `_` is read as
/// `-` (WSGI servers and older gunicorn merge `X_Scoregate_Subject` into `X-Scoregate-Subject`).
/// Names are lower case already (HTTP/2 requires it, hyper lower-cases HTTP/1.1 names).
pub fn remove_lookalikes(headers: &mut HeaderMap, name: &HeaderName) {
    let target = name.as_str().as_bytes();
    let same = |candidate: &HeaderName| {
        let c = candidate.as_str().as_bytes();
        c.len() == target.len()
            && c.iter()
                .zip(target)
                .all(|(&a, &b)| a == b || (a == b'_' && b == b'-') || (a == b'-' && b == b'_'))
    };
    // One pass over the names; nothing is allocated unless a look-alike is there.
    if !headers.keys().any(same) {
        return;
    }
    let found: Vec<HeaderName> = headers.keys().filter(|n| same(n)).cloned().collect();
    for n in found {
        headers.remove(n);
    }
}

/// Whether a path can be forwarded as is: no `.`/`..` segments, plain or percent-encoded, and no
/// encoded `/` or `\`. Such paths could reach outside the route prefix or the upstream's base
/// path once the scoring container normalises them, so they are refused rather than rewritten.
pub fn path_is_safe(path: &str) -> bool {
    let b = path.as_bytes();
    // Most paths have none of the bytes an unsafe path needs; they are done in one scan.
    if !b.iter().any(|&c| matches!(c, b'.' | b'%' | b'\\')) {
        return true;
    }
    // Case-insensitive matching in place, without a lowercased copy.
    let has = |pat: &[u8]| b.windows(pat.len()).any(|w| w.eq_ignore_ascii_case(pat));
    if b.contains(&b'\\') || has(b"%2f") || has(b"%5c") {
        return false;
    }
    !path.split('/').any(|seg| {
        [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."]
            .iter()
            .any(|dot| seg.eq_ignore_ascii_case(dot))
    })
}

/// Keeps a client's `x-request-id` if it is 1 to 100 visible ASCII characters (the scoring
/// container refuses longer ones with 431, AZUREML-CONTRACT B.3); otherwise makes a `UUIDv4`.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if (1..=100).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c)) {
            return v.clone();
        }
    }
    new_request_id()
}

pub fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    // Shared from the start (one allocation that every clone counts on): the id is cloned into
    // the upstream request and twice into the response, and a value copied from a slice would
    // allocate again on its first clone. A hyphenated UUID is always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The whole `X-Forwarded-For` chain: several header lines are one comma-separated list
/// (RFC 9110 §5.3), so a proxy that appends its own line is read together with the client's.
pub fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    let mut lines = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let first = lines.next()?;
    let mut chain = first.to_owned();
    for line in lines {
        chain.push_str(", ");
        chain.push_str(line);
    }
    Some(chain)
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. Client-supplied values are replaced, never
/// appended to: a client could otherwise claim any address.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: HeaderValue,
    tls: bool,
    host: Option<HeaderValue>,
) {
    headers.insert(X_FORWARDED_FOR.clone(), client_ip);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Adds the request-id headers every response carries (AZUREML-CONTRACT A2).
///
/// The values are marked sensitive, which HTTP/2 sends as literals never indexed (RFC 7541
/// §6.2.3). An id is new on every response, so indexing it would only churn the connection's
/// HPACK table: h2's encoder compares the value with every entry of the same name (about 25 per
/// name once the table is full), inserts it and evicts older entries, for an entry no later
/// response can use. Not indexing costs the names' 20 bytes per response and saves 2.1 % of the
/// instructions per HTTP/2 request (loadtest/RESULTS.md). HTTP/1.1 ignores the mark.
pub fn set_response_ids(
    headers: &mut HeaderMap,
    request_id: &HeaderValue,
    client_request_id: Option<&HeaderValue>,
) {
    let id = never_indexed(request_id);
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    headers.insert(X_MS_REQUEST_ID.clone(), id);
    if let Some(c) = client_request_id {
        headers.insert(X_MS_CLIENT_REQUEST_ID.clone(), never_indexed(c));
    }
}

fn never_indexed(value: &HeaderValue) -> HeaderValue {
    let mut value = value.clone();
    value.set_sensitive(true);
    value
}

/// Marks a response as the gateway's own JSON: the content type, `nosniff` so a browser never
/// reads it as anything else, and `no-store` because an error names the request and a management
/// answer may carry keys or tokens, which no cache may keep.
pub fn set_gateway_json(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod lookalike_tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_subject_header_is_removed_and_nothing_else() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-scoregate-subject", "a"),
            ("X_Scoregate_Subject", "b"),
            ("x-scoregate_subject", "c"),
            ("x-scoregate-subjects", "keep"),
            ("x-scoregate", "keep"),
            ("content-type", "keep"),
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
        }
        remove_lookalikes(&mut h, &X_SCOREGATE_SUBJECT);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["content-type", "x-scoregate", "x-scoregate-subjects"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn removes_static_and_nominated_hop_by_hop_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "application/json"),
            ("x-keep", "yes"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "x-keep"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        // The quick check before the removals must know every name the removals do.
        for name in &HOP_BY_HOP {
            let mut h = map(&[(name.as_str(), "x"), ("content-type", "application/json")]);
            remove_hop_by_hop(&mut h);
            let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["content-type"], "{name}");
        }
    }

    #[test]
    fn unsafe_paths() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a/%2E",
            "/a/..%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a\\b",
            "/..",
        ] {
            assert!(!path_is_safe(bad), "{bad}");
        }
        for ok in [
            "/",
            "/score",
            "/a/..b/c",
            "/a/b.json",
            "/a/.well-known",
            "/a%20b",
        ] {
            assert!(path_is_safe(ok), "{ok}");
        }
    }

    #[test]
    fn request_id_rules() {
        let kept = request_id(&map(&[("x-request-id", "rid-123")]));
        assert_eq!(kept, "rid-123");
        let hundred = "a".repeat(100);
        assert_eq!(
            request_id(&map(&[("x-request-id", &hundred)])),
            hundred.as_str()
        );
        for bad in ["a".repeat(101), "has space".into(), String::new()] {
            let id = request_id(&map(&[("x-request-id", &bad)]));
            assert_ne!(id, bad.as_str());
            assert!(uuid::Uuid::parse_str(id.to_str().expect("ascii")).is_ok());
        }
        let fresh = request_id(&HeaderMap::new());
        let parsed = uuid::Uuid::parse_str(fresh.to_str().expect("ascii")).expect("uuid");
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[test]
    fn response_ids_are_never_indexed() {
        let id = HeaderValue::from_static("8d1c0f9e-2c7b-4c1e-9a59-0b8f3e6d2a11");
        let client = HeaderValue::from_static("client-42");
        let mut h = map(&[("x-request-id", "from-the-model")]);
        set_response_ids(&mut h, &id, Some(&client));
        for (name, want) in [
            (&X_REQUEST_ID, &id),
            (&X_MS_REQUEST_ID, &id),
            (&X_MS_CLIENT_REQUEST_ID, &client),
        ] {
            assert_eq!(h.get_all(name).iter().count(), 1, "{name}");
            assert_eq!(&h[name], want, "{name}");
            assert!(h[name].is_sensitive(), "{name} would be indexed");
        }
        // The caller's value, which also goes upstream and into the record, is left as it was.
        assert!(!id.is_sensitive() && !client.is_sensitive());
    }

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-host", "evil")]);
        set_forwarded(&mut h, HeaderValue::from_static("127.0.0.1"), true, None);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert!(h.get(&X_FORWARDED_HOST).is_none());
    }
}
