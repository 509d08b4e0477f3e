//! Query redaction with the default sensitive names. The input is a query string.
//! Oracles: nothing but values changes (same parameter count, names and separators kept);
//! every parameter the redactor itself calls sensitive (checked alone) shows `REDACTED`;
//! redacting twice changes nothing more.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use scoregate::fuzzing::Redaction;

static REDACTION: LazyLock<Redaction> = LazyLock::new(Redaction::default);

fn pieces(query: &str) -> Vec<&str> {
    query.split(['&', ';']).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let r = &*REDACTION;
    let url = format!("/score?{query}");
    let out = r.url(&url);
    let (path, out_query) = out.split_once('?').expect("the query stays");
    assert_eq!(path, "/score");
    let (before, after) = (pieces(query), pieces(out_query));
    assert_eq!(before.len(), after.len(), "parameters added or lost");
    for (b, a) in before.iter().zip(&after) {
        let Some((name, _)) = b.split_once('=') else {
            assert_eq!(b, a, "a piece without '=' changed");
            continue;
        };
        let alone = format!("/?{name}=v");
        let sensitive = r.url(&alone) != alone.as_str();
        if sensitive {
            assert_eq!(
                *a,
                format!("{name}=REDACTED"),
                "sensitive {name:?} kept its value"
            );
        } else {
            assert_eq!(b, a, "a harmless parameter changed");
        }
    }
    assert_eq!(r.url(&out), out, "redaction is not idempotent");
});
