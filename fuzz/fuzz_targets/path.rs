//! Path checks and route matching. The input is `route \n path`.
//! Oracles:
//! - a path the gateway calls safe has no `.`/`..` segment and no `/` or `\` once an upstream
//!   percent-decodes it once;
//! - a route match returns the rest of the path on a segment boundary: `route + rest == path`
//!   (or `rest == "/"` for the route itself).
#![no_main]

use libfuzzer_sys::fuzz_target;

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// One round of percent-decoding, as an upstream framework applies to a path.
fn decode_once(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (route, path) = text.split_once('\n').unwrap_or(("/iris", text));
    if scoregate::fuzzing::path_is_safe(path) {
        // Encoded separators are refused outright, so the raw segments are the decoded ones.
        assert!(!path.contains('\\'), "backslash passed in {path:?}");
        for segment in path.split('/') {
            let decoded = decode_once(segment);
            assert!(
                decoded != b"." && decoded != b"..",
                "dot segment {segment:?} passed in {path:?}"
            );
            assert!(
                !decoded.contains(&b'/') && !decoded.contains(&b'\\'),
                "encoded separator in {segment:?} passed in {path:?}"
            );
        }
    }
    if let Some(rest) = scoregate::fuzzing::route_rest(route, path) {
        assert!(rest.starts_with('/'));
        if path == route {
            assert_eq!(rest, "/");
        } else {
            assert_eq!(format!("{route}{rest}"), path);
        }
    }
});
