//! Token verification. The first byte chooses the mode:
//! - even: the rest is a bearer token as a client sends it (header/claims parsing, base64,
//!   signature checks, the cache);
//! - odd: the rest is `header JSON \n claims JSON`, signed with the service's real ES256 key, so
//!   the fuzzer reaches the claims checks behind a valid signature. The key's `kid` is random per
//!   run, so `@KID@` in the header stands for it (the seeds use it).
//!
//! Oracle: whatever verifies was signed by the service's key, names `alg` ES256 and its `kid`,
//! and carries `iss = scoregate`, audience `iris` and a non-empty `sub` of at most 256 bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use scoregate::fuzzing::TokenFixture;
use serde_json::Value;

static FIXTURE: LazyLock<TokenFixture> = LazyLock::new(TokenFixture::new);

/// The header members the oracle checks; the others are skipped as the verifier skips them.
#[derive(serde::Deserialize)]
struct Header {
    alg: Value,
    kid: Value,
}

/// The claims the oracle checks.
#[derive(serde::Deserialize)]
struct Claims {
    iss: Value,
    aud: Value,
    sub: Value,
}

fn audience_is_iris(aud: &Value) -> bool {
    match aud {
        Value::String(s) => s == "iris",
        Value::Array(items) => items.iter().any(|a| a.as_str() == Some("iris")),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = &*FIXTURE;
    if mode % 2 == 0 {
        // No key of ours signed this: nothing a fuzzer can write may verify.
        if let Ok(subject) = fixture.verify(rest) {
            panic!("an unsigned token verified as {subject:?}");
        }
        return;
    }
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (header, claims) = rest.split_at(split);
    let claims = claims.get(1..).unwrap_or_default();
    let kid = fixture.kid();
    let header = String::from_utf8_lossy(header).replace("@KID@", &kid);
    let header = header.as_bytes();
    let token = fixture.sign(header, claims);
    let Ok(subject) = fixture.verify(token.as_bytes()) else {
        return;
    };
    // Members the verifier ignores are skipped unchecked by serde, as they are by the gateway:
    // invalid UTF-8 (the first 10-minute run) and numbers out of range (the 10-million run of
    // 2026-12-03) in them still verify. The oracle reads the members it checks the same way.
    let header: Header = serde_json::from_str(&String::from_utf8_lossy(header))
        .expect("a verified header has alg and kid");
    assert_eq!(header.alg, "ES256", "verified with alg {:?}", header.alg);
    assert_eq!(header.kid.as_str(), Some(kid.as_str()));
    let claims: Claims = serde_json::from_str(&String::from_utf8_lossy(claims))
        .expect("verified claims have iss, aud and sub");
    assert_eq!(claims.iss, "scoregate");
    assert!(audience_is_iris(&claims.aud), "audience {:?}", claims.aud);
    assert_eq!(claims.sub.as_str(), Some(&*subject));
    assert!(!subject.is_empty() && subject.len() <= 256);
    // The same token again comes from the cache and must agree.
    assert_eq!(
        fixture.verify(token.as_bytes()).as_deref().ok(),
        Some(&*subject)
    );
});
