//! Token verification against hand-made tokens. Tokens are minted here by an independent JWS
//! encoder (aws-lc-rs signatures, hand-built JSON and base64url), not by jsonwebtoken, so the
//! verifier is checked against a second implementation.

use std::path::Path;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::*;
use crate::auth::jwt::signing::{SigningFile, SigningFileState};
use crate::config::SigningSource;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An independent ES256 signer over the service's persisted key.
struct Minter {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Minter {
    fn from_state(path: &Path) -> Self {
        let file: Value =
            serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
        let key = file["keys"]
            .as_array()
            .expect("keys")
            .last()
            .expect("key")
            .clone();
        let pem = key["privateKey"].as_str().expect("pem");
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der())
            .expect("pkcs8");
        Self {
            pair,
            kid: key["kid"].as_str().expect("kid").to_owned(),
        }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), message.as_bytes())
            .expect("sign");
        format!("{message}.{}", b64(sig.as_ref()))
    }

    fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "JWT", "kid": self.kid})
    }
}

fn now() -> u64 {
    unix_now()
}

fn claims(aud: &str) -> Value {
    let n = now();
    json!({"iss": "scoregate", "aud": aud, "sub": "alice", "iat": n, "nbf": n, "exp": n + 600})
}

fn counters() -> CacheCounters {
    let m = crate::telemetry::metrics::Metrics::new();
    let s = crate::telemetry::metrics::ServiceMetrics::new(&m, "iris", "token");
    CacheCounters {
        hit: s.token_cache_hit,
        miss: s.token_cache_miss,
    }
}

/// The service's signing-key file source, as the reload loop keeps it.
fn signing_file(config: &TokenConfig) -> SigningFile {
    SigningFile::new(
        config.signing.clone(),
        config.algorithm,
        TokenAuthority::overlap(config),
    )
}

/// The signing keys on disk, generated and written first if there are none (as the builder
/// does at a first start).
fn signing_keys(config: &TokenConfig) -> Arc<SigningSet> {
    let file = signing_file(config);
    match file.read(false).expect("read signing keys") {
        SigningFileState::Loaded(l) => l.set,
        SigningFileState::Absent => {
            let (set, bytes) = file.generate().expect("generate");
            file.write(&bytes).expect("write");
            Arc::new(set)
        }
    }
}

/// A management rotation as the reload loop applies it: the file is rewritten and the next
/// state's authority holds the new keys (sharing the cache, as the builder does). Returns the
/// new authority and kid.
fn rotated(a: &TokenAuthority) -> (TokenAuthority, Arc<str>) {
    let file = signing_file(&a.config);
    let (_, kid, bytes) = file.rotate(&a.signing, "test").expect("rotate");
    file.write(&bytes).expect("write rotation");
    let set = match file.read(true).expect("re-read") {
        SigningFileState::Loaded(l) => l.set,
        SigningFileState::Absent => panic!("the rotated file is there"),
    };
    let b = TokenAuthority::new(
        "iris",
        a.config.clone(),
        set,
        Vec::new(),
        Arc::clone(&a.cache),
        a.counters.clone(),
    );
    (b, kid)
}

/// Retired keys dropped, as the reload loop does once their overlap has ended: the next state's
/// authority, whose cache keeps only entries its live keys vouch for.
fn pruned(a: &TokenAuthority, now: u64) -> TokenAuthority {
    let file = signing_file(&a.config);
    let current = file.read(true).expect("re-read");
    let set = match current.pruned(now).unwrap_or(current) {
        SigningFileState::Loaded(l) => l.set,
        SigningFileState::Absent => panic!("the file is there"),
    };
    let b = TokenAuthority::new(
        "iris",
        a.config.clone(),
        set,
        Vec::new(),
        Arc::clone(&a.cache),
        a.counters.clone(),
    );
    b.cache.retain_kids(&b.live_kids(now));
    b
}

fn authority(dir: &Path, lifetime: u64, leeway: u64) -> TokenAuthority {
    let config = TokenConfig {
        algorithm: Algorithm::ES256,
        issuer: "scoregate".into(),
        lifetime: Duration::from_secs(lifetime),
        refresh_after: Duration::from_secs(lifetime / 2),
        leeway: Duration::from_secs(leeway),
        signing: SigningSource::State {
            path: dir.join("signing/iris.json"),
        },
        subject_header: None,
        cache_entries: 1000,
        trusted: Vec::new(),
    };
    let signing = signing_keys(&config);
    TokenAuthority::new(
        "iris",
        config,
        signing,
        Vec::new(),
        Arc::new(TokenCache::new(1000)),
        counters(),
    )
}

fn check(a: &TokenAuthority, token: &str) -> Result<VerifiedToken, AuthFailure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(a.verify(token.as_bytes()))
}

#[test]
fn independently_minted_token_is_accepted_and_issued_tokens_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = authority(dir.path(), 3600, 60);
    let m = Minter::from_state(&dir.path().join("signing/iris.json"));
    let ok = check(&a, &m.sign(&m.header(), &claims("iris"))).expect("valid token");
    assert_eq!(&*ok.subject, "alice");
    // No `rfa` claim: refresh-after is the midpoint of iat..exp.
    assert_eq!(ok.refresh_after, Some(ok.exp - 300));

    let issued = a.issue("bob").expect("issue");
    assert!(issued.refresh_after < issued.expiry_on);
    assert_eq!(issued.expiry_on - issued.refresh_after, 1800);
    let v = check(&a, &issued.access_token).expect("own token");
    assert_eq!(&*v.subject, "bob");
    assert_eq!(v.refresh_after, Some(issued.refresh_after));
    // Header carries the kid; claims the documented set.
    let parts: Vec<&str> = issued.access_token.split('.').collect();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(header["kid"], m.kid);
    assert_eq!(header["alg"], "ES256");
    let body: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    for claim in ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"] {
        assert!(body.get(claim).is_some(), "missing {claim} in {body}");
    }
    assert_eq!(body["aud"], "iris");
}

#[test]
#[allow(clippy::too_many_lines)] // one table of cases
fn hand_made_bad_tokens_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = authority(dir.path(), 3600, 60);
    let m = Minter::from_state(&dir.path().join("signing/iris.json"));
    let good = m.sign(&m.header(), &claims("iris"));
    let parts: Vec<&str> = good.split('.').collect();
    let n = now();

    // alg: none, unsigned.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": m.kid}).to_string().as_bytes()),
        b64(claims("iris").to_string().as_bytes())
    );
    // HS256 "signed" with the service's public key: the classic algorithm confusion.
    let public = m.pair.public_key().as_ref().to_vec();
    let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": m.kid});
    let hs_message = format!(
        "{}.{}",
        b64(hs_header.to_string().as_bytes()),
        b64(claims("iris").to_string().as_bytes())
    );
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public),
        hs_message.as_bytes(),
    );
    let hs_confusion = format!("{hs_message}.{}", b64(tag.as_ref()));

    let mut tampered_payload = claims("iris");
    tampered_payload["sub"] = json!("mallory");
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(tampered_payload.to_string().as_bytes()),
        parts[2]
    );
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
    sig[10] ^= 1;
    let tampered_signature = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));

    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims("iris");
        change(&mut c);
        m.sign(&m.header(), &c)
    };
    let cases: Vec<(&str, String, AuthFailure)> = vec![
        ("alg none", none, AuthFailure::TokenMalformed),
        (
            "HS256 with the public key",
            hs_confusion,
            AuthFailure::TokenAlgorithm,
        ),
        (
            "unknown kid",
            m.sign(&json!({"alg": "ES256", "kid": "nope"}), &claims("iris")),
            AuthFailure::TokenUnknownKey,
        ),
        (
            "no kid",
            m.sign(&json!({"alg": "ES256"}), &claims("iris")),
            AuthFailure::TokenMalformed,
        ),
        (
            "wrong iss",
            with(&|c| c["iss"] = json!("evil")),
            AuthFailure::TokenIssuer,
        ),
        (
            "wrong aud",
            with(&|c| c["aud"] = json!("other")),
            AuthFailure::TokenAudience,
        ),
        (
            "token of another service",
            m.sign(&m.header(), &claims("iris2")),
            AuthFailure::TokenAudience,
        ),
        (
            "expired beyond leeway",
            with(&|c| c["exp"] = json!(n - 120)),
            AuthFailure::TokenExpired,
        ),
        (
            "nbf in the future",
            with(&|c| c["nbf"] = json!(n + 3600)),
            AuthFailure::TokenNotYetValid,
        ),
        (
            "no sub",
            with(&|c| drop(c.as_object_mut().expect("obj").remove("sub"))),
            AuthFailure::TokenClaims,
        ),
        (
            "no exp",
            with(&|c| drop(c.as_object_mut().expect("obj").remove("exp"))),
            AuthFailure::TokenClaims,
        ),
        (
            "tampered payload",
            tampered_payload,
            AuthFailure::TokenSignature,
        ),
        (
            "tampered signature",
            tampered_signature,
            AuthFailure::TokenSignature,
        ),
        (
            "truncated",
            format!("{}.{}", parts[0], parts[1]),
            AuthFailure::TokenMalformed,
        ),
        // The signature covers the payload's exact bytes, so it fails before any decoding.
        (
            "payload not base64url",
            format!("{}.{}.{}", parts[0], "!!!notbase64!!!", parts[2]),
            AuthFailure::TokenSignature,
        ),
        (
            "header not base64url",
            format!("{}.{}.{}", "!!!notbase64!!!", parts[1], parts[2]),
            AuthFailure::TokenMalformed,
        ),
        (
            "three-dots garbage",
            "...".to_owned(),
            AuthFailure::TokenMalformed,
        ),
        (
            "9 KiB",
            format!("{good}{}", "a".repeat(9 * 1024)),
            AuthFailure::TokenTooLarge,
        ),
    ];
    for (name, token, expected) in cases {
        assert_eq!(
            check(&a, &token).map(|v| v.subject.to_string()),
            Err(expected),
            "{name}"
        );
    }
    // Within leeway is still accepted.
    assert!(check(&a, &with(&|c| c["exp"] = json!(n - 30))).is_ok());
}

#[test]
fn cache_hits_skip_signature_work_but_still_check_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = authority(dir.path(), 3600, 0);
    let m = Minter::from_state(&dir.path().join("signing/iris.json"));
    let token = m.sign(&m.header(), &claims("iris"));
    check(&a, &token).expect("first");
    check(&a, &token).expect("second");
    assert_eq!((a.counters.miss.get(), a.counters.hit.get()), (1, 1));
    assert_eq!(a.cache.len(), 1);

    // A token that expires one second from now: accepted, then refused once the clock passes
    // `exp`, although it sits in the cache.
    let exp = now() + 1;
    let mut c = claims("iris");
    c["exp"] = json!(exp);
    let short = m.sign(&m.header(), &c);
    check(&a, &short).expect("not yet expired");
    while now() <= exp {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        check(&a, &short).map(|_| ()),
        Err(AuthFailure::TokenExpired)
    );
}

#[test]
fn rotation_keeps_old_tokens_until_they_expire_then_retires_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("signing/iris.json");
    // Lifetime 1 s, no leeway: the old key verifies for one more second after rotation.
    let before = authority(dir.path(), 1, 0);
    let old_minter = Minter::from_state(&state);
    let old = before.issue("alice").expect("issue");
    check(&before, &old.access_token).expect("cached before rotation");
    let (a, new_kid) = rotated(&before);
    let new = a.issue("bob").expect("issue");
    let header = jsonwebtoken::decode_header(&new.access_token).expect("header");
    assert_eq!(header.kid.as_deref(), Some(&*new_kid), "the new key signs");
    assert_ne!(old_minter.kid, &*new_kid);
    check(&a, &old.access_token).expect("old token still accepted");
    check(&a, &new.access_token).expect("new token accepted");
    // A long-lived token signed by the old key verifies during the overlap...
    let long_lived = old_minter.sign(&old_minter.header(), &claims("iris"));
    check(&a, &long_lived).expect("old key verifies during the overlap");

    let retire = now() + 1;
    while now() <= retire {
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = pruned(&a, now());
    assert_eq!(a.signing.active_kids(now()), vec![new_kid]);
    // ...and not after: the key is retired and its cache entries are gone.
    assert_eq!(
        check(&a, &long_lived).map(|_| ()),
        Err(AuthFailure::TokenUnknownKey)
    );
    // The rotation was persisted: a fresh authority over the same state uses the new key.
    let reopened = authority(dir.path(), 1, 0);
    let kid = reopened.signing.signer().map(|k| k.kid.to_string());
    assert_eq!(kid.as_deref(), header.kid.as_deref());
}
