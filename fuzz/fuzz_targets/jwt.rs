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
    let header: Value = serde_json::from_slice(header).expect("a verified header is JSON");
    assert_eq!(
        header["alg"], "ES256",
        "verified with alg {:?}",
        header["alg"]
    );
    assert_eq!(header["kid"].as_str(), Some(kid.as_str()));
    // Claims whose ignored members hold invalid UTF-8 verify (serde skips them unchecked; the
    // first 10-minute run found this): read them lossily for the oracle.
    let claims: Value =
        serde_json::from_str(&String::from_utf8_lossy(claims)).expect("verified claims are JSON");
    assert_eq!(claims["iss"], "scoregate");
    assert!(
        audience_is_iris(&claims["aud"]),
        "audience {:?}",
        claims["aud"]
    );
    assert_eq!(claims["sub"].as_str(), Some(&*subject));
    assert!(!subject.is_empty() && subject.len() <= 256);
    // The same token again comes from the cache and must agree.
    assert_eq!(
        fixture.verify(token.as_bytes()).as_deref().ok(),
        Some(&*subject)
    );
});
